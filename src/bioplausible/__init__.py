"""bioplausible: learning without end-to-end backpropagation.

Learning rules ("algorithms") and architectures ("models") are separate and found by name::

    import bioplausible as bp
    model = bp.create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[128])
    rule = bp.create_algorithm("fa", model)
    result = bp.train(algo="fa", model="mlp", dataset="digits", epochs=5)
"""

__version__ = "0.1.0"

from .algorithms import ALGORITHMS, LearningRule, create_algorithm, list_algorithms  # noqa: E402
from .config import TrainConfig, load_config  # noqa: E402
from .data import DATASETS, list_datasets, load_dataset  # noqa: E402
from .errors import BioplausibleError  # noqa: E402
from .models import MODELS, create_model, list_models  # noqa: E402
from .training import RunResult, Trainer, resume, train  # noqa: E402

__all__ = [
    "ALGORITHMS", "DATASETS", "MODELS", "BioplausibleError", "LearningRule", "RunResult", "TrainConfig",
    "Trainer", "create_algorithm", "create_model", "list_algorithms", "list_datasets", "list_models",
    "load_config", "load_dataset", "resume", "train",
]
