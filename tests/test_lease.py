"""Leader election over a coordination.k8s.io/v1 Lease, against an in-memory Lease store
with the API server's optimistic concurrency (resourceVersion → 409) and fake clocks:
acquire, renew, no takeover while the holder renews, takeover once its lease expires
as observed here, races, losing the lease when renewals fail, release — and the
adapter over the Kubernetes client."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
import pytest
from kubernetes.client.exceptions import ApiException

from extender.cluster.lease import KubernetesLeaseApi, LeaderElector, LeaseConflict, micro_time
from extender.config.controller import LeaseSettings

SETTINGS = LeaseSettings(
    name="powercap-controller",
    namespace="powercap-system",
    duration_s=15.0,
    renew_deadline_s=10.0,
    retry_period_s=2.0,
)


class LeaseStore:
    """Leases as the API server keeps them: every write bumps the resourceVersion, and a
    replace carrying an older one is refused (409)."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.down = False
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionRefusedError("API server unreachable")

    def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check()
        found = self.leases.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            raise LeaseConflict("already exists")
        return self._store(key, body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check()
        current = self.leases[(namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise LeaseConflict("the object has been modified")
        return self._store((namespace, name), body)

    def _store(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[key] = stored
        return copy.deepcopy(stored)

    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.leases[(SETTINGS.namespace, SETTINGS.name)]["spec"]
        return spec


class Clock:
    def __init__(self, at: float = 1000.0) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at


def elector(
    store: LeaseStore, identity: str, mono: Clock, wall: Clock | None = None
) -> LeaderElector:
    return LeaderElector(
        store, SETTINGS, identity, clock=wall or Clock(1_795_730_400.0), monotonic=mono
    )


def test_first_candidate_creates_the_lease_and_the_second_waits() -> None:
    store, mono = LeaseStore(), Clock()
    a, b = elector(store, "a", mono), elector(store, "b", mono)
    changes: list[bool] = []
    a.on_change = changes.append
    assert a.try_acquire_or_renew() and a.is_leader()
    assert changes == [True]
    spec = store.spec()
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["renewTime"].endswith("Z") and "." in spec["renewTime"]
    assert not b.try_acquire_or_renew() and not b.is_leader()


def test_no_takeover_while_the_holder_renews() -> None:
    store, mono = LeaseStore(), Clock()
    wall = Clock(1_795_730_400.0)
    a, b = elector(store, "a", mono, wall), elector(store, "b", mono, wall)
    a.try_acquire_or_renew()
    for _ in range(20):  # 40 s: far beyond one lease duration
        mono.at += 2
        wall.at += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert store.spec()["holderIdentity"] == "a"


def test_takeover_when_the_holders_lease_expires_as_observed_here() -> None:
    store, mono = LeaseStore(), Clock()
    a, b = elector(store, "a", mono), elector(store, "b", mono)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b first sees a's record now
    # a stops renewing (crashed). Its renewTime is an old wall-clock time, but b only
    # trusts its own clock: no takeover before the duration has passed since b saw
    # the record change.
    mono.at += 14.9
    assert not b.try_acquire_or_renew()
    mono.at += 0.2
    assert b.try_acquire_or_renew() and b.is_leader()
    spec = store.spec()
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    # a comes back: it reads b's lease and steps down at once.
    assert not a.try_acquire_or_renew() and not a.is_leader()


def test_a_skewed_renew_time_does_not_hand_the_lease_over_early() -> None:
    store, mono = LeaseStore(), Clock()
    slow_wall = Clock(1_000_000.0)  # a's clock is days behind
    a = elector(store, "a", mono, slow_wall)
    b = elector(store, "b", mono)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()


def test_two_candidates_racing_for_an_expired_lease_cannot_both_win() -> None:
    store, mono = LeaseStore(), Clock()
    old = elector(store, "old", mono)
    old.try_acquire_or_renew()
    b, c = elector(store, "b", mono), elector(store, "c", mono)
    b.try_acquire_or_renew()
    c.try_acquire_or_renew()
    mono.at += 16

    # Both read the expired lease before either writes.
    real_read = store.read
    seen = real_read(SETTINGS.namespace, SETTINGS.name)
    store.read = lambda namespace, name: copy.deepcopy(seen)  # type: ignore[method-assign]
    won_b = b.try_acquire_or_renew()
    won_c = c.try_acquire_or_renew()
    store.read = real_read  # type: ignore[method-assign]
    assert (won_b, won_c) == (True, False)
    assert store.spec()["holderIdentity"] == "b"


def test_a_leader_that_cannot_renew_stops_acting_by_the_renew_deadline() -> None:
    store, mono = LeaseStore(), Clock()
    a = elector(store, "a", mono)
    changes: list[bool] = []
    a.on_change = changes.append
    a.try_acquire_or_renew()
    store.down = True
    mono.at += 5
    assert a.try_acquire_or_renew()  # the lease written 5 s ago still stands
    mono.at += 5
    assert not a.try_acquire_or_renew() and not a.is_leader()
    assert changes == [True, False]
    # Well before anyone else may take over (15 s after the last renewal).
    assert SETTINGS.renew_deadline_s < SETTINGS.duration_s


def test_release_lets_a_successor_in_at_once() -> None:
    store, mono = LeaseStore(), Clock()
    a, b = elector(store, "a", mono), elector(store, "b", mono)
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    a.release()
    assert not a.is_leader() and store.spec()["holderIdentity"] == ""
    assert b.try_acquire_or_renew()


def test_the_background_thread_acquires_and_releases() -> None:
    store = LeaseStore()
    a = LeaderElector(store, LeaseSettings(retry_period_s=0.01), "a")
    a.start()
    try:
        for _ in range(500):
            if a.is_leader():
                break
            time.sleep(0.01)
        assert a.is_leader()
    finally:
        a.stop()
    assert not a.is_leader()
    assert store.leases[("powercap-system", "powercap-controller")]["spec"]["holderIdentity"] == ""


def test_micro_time() -> None:
    assert micro_time(1_795_730_400.25) == "2026-11-26T22:00:00.250000Z"


# --- the adapter over the Kubernetes client -------------------------------------------------
class _Raw:
    def __init__(self, data: Any) -> None:
        self.data = orjson.dumps(data)

    def release_conn(self) -> None:
        return None


class Coordination:
    """The CoordinationV1Api methods the adapter calls, over a LeaseStore."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> _Raw:
        found = self.store.read(namespace, name)
        if found is None:
            raise ApiException(status=404, reason="Not Found")
        return _Raw(found)

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> _Raw:
        try:
            return _Raw(self.store.create(namespace, body))
        except LeaseConflict as exc:
            raise ApiException(status=409, reason="AlreadyExists") from exc

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> _Raw:
        try:
            return _Raw(self.store.replace(namespace, name, body))
        except LeaseConflict as exc:
            raise ApiException(status=409, reason="Conflict") from exc


def test_kubernetes_adapter_maps_404_and_409() -> None:
    store, mono = LeaseStore(), Clock()
    api = KubernetesLeaseApi(Coordination(store))
    assert api.read("ns", "x") is None
    a = LeaderElector(api, SETTINGS, "a", monotonic=mono)
    b = LeaderElector(api, SETTINGS, "b", monotonic=mono)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    with pytest.raises(LeaseConflict):
        api.create(SETTINGS.namespace, {"metadata": {"name": SETTINGS.name}})
    stale = api.read(SETTINGS.namespace, SETTINGS.name)
    assert stale is not None
    assert a.try_acquire_or_renew()  # bumps the resourceVersion
    with pytest.raises(LeaseConflict):
        api.replace(SETTINGS.namespace, SETTINGS.name, stale)
