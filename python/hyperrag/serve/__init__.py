"""Serving: RAGServeController, queries, and how to build a controller from a plan."""
from hyperrag.serve.controller import RAGServeController
from hyperrag.serve.metrics import ControllerMetrics
from hyperrag.serve.pipeline import PipelineTiming
from hyperrag.serve.query import Query, QueryResult

__all__ = ["ControllerMetrics", "PipelineTiming", "Query", "QueryResult", "RAGServeController"]
