"""The committed model repository agrees with iqa/contract.py and is the production (GPU) one.

config.pbtxt files cannot import the contract, so this is where a drift between them fails.
"""

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from iqa import contract
from iqa.serving.launcher import DEFAULT_REPOSITORY, MODELS

UINT8, FP32, BYTES = pb.DataType.TYPE_UINT8, pb.DataType.TYPE_FP32, pb.DataType.TYPE_STRING


@pytest.fixture(scope="module")
def configs() -> dict[str, pb.ModelConfig]:
    return {m: text_format.Parse((DEFAULT_REPOSITORY / m / "config.pbtxt").read_text(), pb.ModelConfig())
            for m in MODELS}


def io(tensors):
    return [(t.name, t.data_type, list(t.dims)) for t in tensors]


def test_tensor_names_types_and_shapes_follow_the_contract(configs):
    patches = list(contract.PATCH_SHAPE)
    scores = [(name, FP32, [1]) for name in contract.SCORE_NAMES]
    ensemble, preprocess, network = (configs[m] for m in
                                     (contract.ENSEMBLE_MODEL, contract.PREPROCESS_MODEL, contract.NETWORK_MODEL))
    assert io(ensemble.input) == [(contract.IMAGE_INPUT, BYTES, [1])]
    assert io(ensemble.output) == scores
    assert io(preprocess.input) == [(contract.IMAGE_INPUT, BYTES, [1])]
    assert io(preprocess.output) == [(contract.PATCHES, UINT8, patches)]
    assert io(network.input) == [(contract.NETWORK_INPUT, UINT8, patches)]
    assert io(network.output) == [(name, FP32, [1]) for name in contract.NETWORK_OUTPUTS]


def test_the_ensemble_wires_preprocess_into_the_network(configs):
    first, second = configs[contract.ENSEMBLE_MODEL].ensemble_scheduling.step
    assert first.model_name == contract.PREPROCESS_MODEL and second.model_name == contract.NETWORK_MODEL
    assert second.input_map[contract.NETWORK_INPUT] == first.output_map[contract.PATCHES]
    assert {second.output_map[o] for o in contract.NETWORK_OUTPUTS} == set(contract.SCORE_NAMES)


def test_both_composing_models_batch_dynamically_within_the_ensembles_batch(configs):
    ensemble = configs[contract.ENSEMBLE_MODEL]
    assert ensemble.max_batch_size == configs[contract.PREPROCESS_MODEL].max_batch_size == contract.MAX_REQUEST_ROWS
    assert configs[contract.NETWORK_MODEL].max_batch_size == contract.NETWORK_MAX_BATCH
    for model in (contract.PREPROCESS_MODEL, contract.NETWORK_MODEL):
        assert configs[model].HasField("dynamic_batching"), model
        assert configs[model].max_batch_size >= ensemble.max_batch_size, model


def test_the_shared_memory_arithmetic_uses_the_served_shapes(configs):
    assert contract.PATCH_BYTES == int(np.prod(contract.PATCH_SHAPE))
    assert contract.CELLS_BYTES == int(np.prod(contract.CELLS_SHAPE))
    # No Python-backend model's largest execution outgrows a region's start size: regions never grow.
    assert contract.SHM_DEFAULT_BYTES > contract.LARGEST_EXECUTION_BYTES
    assert contract.SHM_DEFAULT_BYTES >= contract.NETWORK_MAX_BATCH * contract.PATCH_BYTES
    assert contract.SHM_DEFAULT_BYTES >= configs[contract.CELLS_NETWORK_MODEL].max_batch_size * contract.CELLS_BYTES
    for model in (contract.PREPROCESS_MODEL, contract.MAP_PREPROCESS_MODEL, contract.MAP_MODEL):
        assert configs[model].max_batch_size == contract.MAX_REQUEST_ROWS, model
    assert contract.SHM_LIMIT_BYTES >= ((contract.PREPROCESS_INSTANCES + contract.MAP_PREPROCESS_INSTANCES)
                                        * contract.SHM_DEFAULT_BYTES)


def test_the_network_is_the_production_libtorch_model_on_gpu_with_warmup(configs):
    network = configs[contract.NETWORK_MODEL]
    # `backend` is the backend Triton loads (backends/pytorch/libtriton_pytorch.so); "pytorch_libtorch"
    # is a platform name, and as a backend name it fails the load (tests/test_server.py serves one).
    assert (network.backend, network.platform) == ("pytorch", "pytorch_libtorch")
    # No re-specialisation of the TorchScript graph at each new batch size (loadtest/first_batch.py).
    assert network.parameters["DISABLE_OPTIMIZED_EXECUTION"].string_value == "true"
    assert [g.kind for g in network.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    assert network.model_warmup and all(w.inputs[contract.NETWORK_INPUT].random_data for w in network.model_warmup)
    preprocess = configs[contract.PREPROCESS_MODEL]
    assert preprocess.backend == "python"
    assert [g.kind for g in preprocess.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]


# The GPU queue policy (BENCHMARKS.md "Queue policy"): closed-loop load up to this concurrency is never
# refused for queue size, and a request is refused only once it has waited the wait bound.
CLOSED_LOOP_CONCURRENCY = 256
WAIT_BOUND_US = 2_000_000


def test_both_composing_models_refuse_only_past_the_wait_bound_and_queue_without_bound_never(configs):
    """The queue policy is what turns overload into fast UNAVAILABLE refusals (tests/test_overload.py)."""
    for model in (contract.PREPROCESS_MODEL, contract.NETWORK_MODEL):
        policy = configs[model].dynamic_batching.default_queue_policy
        assert CLOSED_LOOP_CONCURRENCY <= policy.max_queue_size <= 4 * CLOSED_LOOP_CONCURRENCY, model
        assert policy.default_timeout_microseconds == WAIT_BOUND_US, model  # under the client's 30 s default
        assert policy.timeout_action == pb.ModelQueuePolicy.REJECT, model


# --- the degradation map: iqa_degradation_map = iqa_map_preprocess -> iqa_resnet50_cells -------------------

INT32 = pb.DataType.TYPE_INT32
MAP_MODELS = (contract.MAP_PREPROCESS_MODEL, contract.CELLS_NETWORK_MODEL)


def test_the_map_tensors_follow_the_contract(configs):
    cells = list(contract.CELLS_SHAPE)
    geometry = [(contract.GRID, INT32, [2]), (contract.CELL_BOXES, INT32, [contract.MAX_CELLS, 4]),
                (contract.IMAGE_SIZE, INT32, [2])]
    scores = [(contract.CELL_SCORES, FP32, [contract.MAX_CELLS, 3])] + [(n, FP32, [1]) for n in contract.SCORE_NAMES]
    ensemble, preprocess, network = (configs[m] for m in
                                     (contract.MAP_MODEL, contract.MAP_PREPROCESS_MODEL, contract.CELLS_NETWORK_MODEL))
    assert io(ensemble.input) == [(contract.IMAGE_INPUT, BYTES, [1])]
    assert sorted(io(ensemble.output)) == sorted(scores + geometry)
    assert [t.name for t in ensemble.output] == list(contract.MAP_OUTPUTS)
    assert io(preprocess.input) == [(contract.IMAGE_INPUT, BYTES, [1])]
    assert io(preprocess.output) == [(contract.CELLS, UINT8, cells), *geometry]
    assert io(network.input) == [(contract.CELLS_NETWORK_INPUTS[0], UINT8, cells),
                                 (contract.CELLS_NETWORK_INPUTS[1], INT32, [2])]
    assert io(network.output) == [(name, FP32, dims) for name, (_, _, dims) in zip(contract.CELLS_NETWORK_OUTPUTS, scores)]


def test_the_map_ensemble_wires_the_cells_and_grid_into_the_network_and_geometry_out(configs):
    first, second = configs[contract.MAP_MODEL].ensemble_scheduling.step
    assert first.model_name == contract.MAP_PREPROCESS_MODEL and second.model_name == contract.CELLS_NETWORK_MODEL
    cells_in, grid_in = contract.CELLS_NETWORK_INPUTS
    assert second.input_map[cells_in] == first.output_map[contract.CELLS]
    assert second.input_map[grid_in] == first.output_map[contract.GRID] == contract.GRID
    for name in (contract.CELL_BOXES, contract.IMAGE_SIZE):
        assert first.output_map[name] == name
    assert [second.output_map[o] for o in contract.CELLS_NETWORK_OUTPUTS] == [contract.CELL_SCORES,
                                                                               *contract.SCORE_NAMES]


def test_both_map_models_batch_dynamically_within_the_map_ensembles_batch_and_bound_their_queues(configs):
    ensemble = configs[contract.MAP_MODEL]
    assert ensemble.max_batch_size > 0
    for model in MAP_MODELS:
        assert configs[model].max_batch_size >= ensemble.max_batch_size, model
        policy = configs[model].dynamic_batching.default_queue_policy
        assert 0 < policy.max_queue_size <= 4 * configs[model].max_batch_size, model
        assert 0 < policy.default_timeout_microseconds <= 10_000_000, model
        assert policy.timeout_action == pb.ModelQueuePolicy.REJECT, model


def test_the_cells_network_is_configured_like_the_4_patch_network(configs):
    """So that whatever the launcher (or the NGC image) does for iqa_resnet50 it does for both."""
    network, cells = configs[contract.NETWORK_MODEL], configs[contract.CELLS_NETWORK_MODEL]
    assert (cells.backend, cells.platform) == (network.backend, network.platform)
    assert [g.kind for g in cells.instance_group] == [g.kind for g in network.instance_group]
    assert dict(cells.parameters) == dict(network.parameters)
    preprocess = configs[contract.MAP_PREPROCESS_MODEL]
    assert preprocess.backend == "python"
    # Decoders on the CPU; fewer for the map (the /dev/shm size counts both: iqa/contract.py).
    assert [g.kind for g in preprocess.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert sum(g.count for g in preprocess.instance_group) == contract.MAP_PREPROCESS_INSTANCES


def test_the_cells_networks_warm_up_runs_a_full_grid(configs):
    (warmup,) = configs[contract.CELLS_NETWORK_MODEL].model_warmup
    cells_in, grid_in = contract.CELLS_NETWORK_INPUTS
    assert warmup.inputs[cells_in].random_data and list(warmup.inputs[cells_in].dims) == list(contract.CELLS_SHAPE)
    grid_file = DEFAULT_REPOSITORY / contract.CELLS_NETWORK_MODEL / "warmup" / warmup.inputs[grid_in].input_data_file
    rows, columns = np.fromfile(grid_file, dtype="<i4")
    assert rows * columns == contract.MAX_CELLS
