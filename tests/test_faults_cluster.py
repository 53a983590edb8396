"""The worker and broker faults of tests/test_faults.py against a real local Redis Cluster (3 masters, a
replica each, the same ACL users on every node) with the home's features over 3 shards: every input still
ends with exactly one result. The drill of a master failing is tests/test_failover.py."""
from __future__ import annotations

import pytest

from tests import test_faults as faults
from tests.fault_rig import Rig
from tests.gateway_fixtures import full_bundles  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster_rig(tmp_path_factory, full_bundles):  # noqa: F811
    rig = Rig(tmp_path_factory.mktemp("cluster-faults"), full_bundles["image"], cluster=True, shards=3)
    yield rig
    rig.close()


def test_worker_sigkill_mid_run_on_a_cluster(cluster_rig):
    faults.test_worker_sigkill_mid_run(cluster_rig)


def test_mosquitto_restart_mid_run_on_a_cluster(cluster_rig):
    faults.test_mosquitto_restart_mid_run(cluster_rig)
