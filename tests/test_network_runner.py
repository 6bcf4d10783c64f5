"""The network runner's CPU-testable parts: batch padding for CUDA graphs, precision and layout options.

Capture and replay of CUDA graphs need a GPU (loadtest/gpu/perf.sh); what they rely on is checked
here: a padded batch scores its real rows exactly as the unpadded batch does.
"""

import numpy as np
import pytest
import torch

from iqa.preprocess import preprocess
from iqa.serving.network_runner import NetworkRunner, padded_size, parse_sizes
from tests.conftest import MODEL_PT


@pytest.fixture(scope="module")
def scripted():
    return torch.jit.load(str(MODEL_PT), map_location="cpu").eval()


@pytest.fixture(scope="module")
def batch(photos):
    return torch.from_numpy(np.stack([preprocess(data) for data in photos.values()]))


def test_each_batch_is_padded_to_the_next_captured_size_or_runs_eagerly_past_the_largest():
    sizes = parse_sizes("8, 1,2,4,16,32")
    assert sizes == [1, 2, 4, 8, 16, 32]
    assert [padded_size(n, sizes) for n in (1, 3, 8, 9, 32, 33)] == [1, 4, 8, 16, 32, None]


@pytest.mark.parametrize("text", ["", "0,4", "a,b"])
def test_bad_graph_sizes_are_refused_by_name(text):
    with pytest.raises(ValueError):
        parse_sizes(text)


def test_padding_rows_do_not_change_the_scores_of_the_real_rows(scripted, batch):
    with torch.inference_mode():
        alone = torch.cat(scripted(batch), dim=1)
        padded = torch.cat(scripted(torch.cat([batch, torch.zeros((2, *batch.shape[1:]), dtype=batch.dtype)])), dim=1)
    torch.testing.assert_close(padded[: len(batch)], alone, atol=1e-5, rtol=0)


def test_on_cpu_the_runner_scores_like_the_scripted_module_in_either_layout(scripted, batch):
    with torch.inference_mode():
        expected = torch.cat(scripted(batch), dim=1)
    plain = NetworkRunner(scripted, torch.device("cpu"), graph_sizes=[1, 2, 4])  # graphs: GPU only
    assert plain.graph_sizes == []
    torch.testing.assert_close(torch.cat(plain(batch), dim=1), expected, atol=0, rtol=0)
    nhwc = NetworkRunner(torch.jit.load(str(MODEL_PT), map_location="cpu").eval(), torch.device("cpu"),
                         channels_last=True)
    torch.testing.assert_close(torch.cat(nhwc(batch), dim=1), expected, atol=1e-4, rtol=0)


def test_an_unknown_precision_is_refused_by_name(scripted):
    with pytest.raises(ValueError, match="fp32 or fp16"):
        NetworkRunner(scripted, torch.device("cpu"), precision="int8")


def test_cuda_graphs_are_all_captured_at_start_largest_first_into_one_pool_and_never_on_a_request():
    """Static (capture needs a GPU): the sizes are captured when the runner is made, the largest first, with a
    shared pool, and the request path only looks graphs up."""
    import inspect

    from iqa.serving import network_runner

    assert network_runner.capture_order([8, 1, 32, 2, 8]) == [32, 8, 2, 1]
    call = inspect.getsource(NetworkRunner.__call__)
    assert "_capture(" not in call and "CUDAGraph" not in call and "self._graphs.get(" in call
    init = inspect.getsource(NetworkRunner.__init__)
    assert "graph_pool_handle()" in init and "capture_order(self.graph_sizes)" in init
    assert "pool=pool" in inspect.getsource(NetworkRunner._capture)
