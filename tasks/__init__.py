"""Federated learning tasks (data, model, local training) shared by coordinator and participants.

Look a task up by name with :func:`get_task` ("digits", "mnist5k", "charlm", "smollm2-lora", ...) or plug
in your own with ``"package.module:object"``. Importing this package is cheap: datasets load only when asked.
"""

from tasks.base import Dataset, EvalResult, Task, TokenDataset, TrainConfig, TrainResult
from tasks.charlm import CharLMTask
from tasks.classification import ClassificationTask
from tasks.digits import DigitsTask
from tasks.hflm import HFCausalLMTask
from tasks.mnist5k import Mnist5kTask
from tasks.params import model_arrays, model_to_vector, num_parameters, vector_to_model
from tasks.participants import (
    TEST_FILE,
    export_member_data,
    export_partitions,
    load_partition,
    load_pool,
    load_splits,
    load_test,
    participant_file,
    partition_indices,
    resolve_groups,
)
from tasks.registry import UnknownTaskError, get_task, register_task, task_names, task_ref
from tasks.synthetic import Synthetic1e5, Synthetic1e6

__all__ = [
    "TEST_FILE",
    "CharLMTask",
    "ClassificationTask",
    "Dataset",
    "DigitsTask",
    "EvalResult",
    "HFCausalLMTask",
    "Mnist5kTask",
    "Synthetic1e5",
    "Synthetic1e6",
    "Task",
    "TokenDataset",
    "TrainConfig",
    "TrainResult",
    "UnknownTaskError",
    "export_member_data",
    "export_partitions",
    "get_task",
    "load_partition",
    "load_pool",
    "load_splits",
    "load_test",
    "model_arrays",
    "model_to_vector",
    "num_parameters",
    "participant_file",
    "partition_indices",
    "register_task",
    "resolve_groups",
    "task_names",
    "task_ref",
    "vector_to_model",
]
