"""The lib for collaborative learning across edge nodes, in Sedna's shape: a worker trains with
``FederatedLearning(estimator, aggregation=...).train(data)``, an aggregator runs ``AggregationServer``, and both
talk only to the local controller of their node (``LC_SERVER``), which carries the weights over the tunnel.

numpy is the only dependency; an estimator of any framework plugs in through ``Estimator``.
"""

from learning.aggregation import FedAvg, FedProx, get_aggregation
from learning.estimator import MLP, Estimator
from learning.server import AggregationServer
from learning.worker import FederatedLearning

__all__ = ["MLP", "AggregationServer", "Estimator", "FedAvg", "FedProx", "FederatedLearning", "get_aggregation"]
