"""Run by tests/test_multinode.py in its own process: a 2-node local Ray cluster (two raylets), one
training worker per node (STRICT_SPREAD); prints the run summary as JSON on the last line."""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from rmray.config import TrainConfig
from rmray.ray_env import init_ray, quiet_env
from rmray.train.run import train

quiet_env()
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
init_ray(cluster.address)
assert len([n for n in ray.nodes() if n["Alive"]]) == 2
cfg = TrainConfig(**json.loads(sys.argv[1]) | {"placement_strategy": "STRICT_SPREAD"})
result = train(cfg)
ray.shutdown()
cluster.shutdown()
print(json.dumps(result.summary))
