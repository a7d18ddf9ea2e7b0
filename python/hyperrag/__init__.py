"""HyperRAG: KV-cache optimization for retrieval-augmented generation serving.

The public API is the quickstart's: describe the workload (RAGOptimizeConfig),
search schedules (RAGOptimize.optimize), build a serving controller and send it
queries (RAGServeController.process). Importing this package loads neither
torch nor the native core; those come with the engines and the cache.
"""
from hyperrag.models import LLMModel
from hyperrag.plan import OptimizeResult, RAGOptimize, RAGOptimizeConfig, Schedule
from hyperrag.serve import Query, QueryResult, RAGServeController

__version__ = "0.2.0"

__all__ = [
    "LLMModel",
    "OptimizeResult",
    "Query",
    "QueryResult",
    "RAGOptimize",
    "RAGOptimizeConfig",
    "RAGServeController",
    "Schedule",
    "__version__",
]
