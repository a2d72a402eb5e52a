"""Ray's start-up in a simulation: its fixed 30 s raylet wait can run out on a busy machine although
nothing is wrong; fedloom starts Ray again (twice at most) instead of failing the whole run. Any other
start-up error still stops the run at once."""

from __future__ import annotations

import pytest

from simulations import runner

TIMEOUT = Exception(
    "The current node timed out during startup. This could happen because some of the raylet failed to "
    "startup or the GCS has become overloaded."
)


class FakeRay:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.calls, self.shutdowns = failures, 0, 0

    def init(self, **_: object) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    def is_initialized(self) -> bool:
        return True

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.fixture
def fake_ray(monkeypatch):
    def install(failures: list[Exception]) -> FakeRay:
        import ray

        fake = FakeRay(failures)
        for name in ("init", "is_initialized", "shutdown"):
            monkeypatch.setattr(ray, name, getattr(fake, name))
        return fake

    return install


def test_a_ray_start_up_timeout_is_tried_again(fake_ray):
    ray = fake_ray([TIMEOUT, TIMEOUT])
    runner.start_ray({})
    assert ray.calls == 3 and ray.shutdowns == 2


def test_three_timeouts_in_a_row_are_the_error(fake_ray):
    ray = fake_ray([TIMEOUT, TIMEOUT, TIMEOUT])
    with pytest.raises(Exception, match="timed out during startup"):
        runner.start_ray({})
    assert ray.calls == runner.RAY_START_ATTEMPTS == 3


def test_any_other_start_up_error_is_not_tried_again(fake_ray):
    ray = fake_ray([ValueError("bad argument")])
    with pytest.raises(ValueError, match="bad argument"):
        runner.start_ray({})
    assert ray.calls == 1


def test_one_ray_keeps_ray_between_runs_and_restores_flowers_terminate(fake_ray):
    """Inside one_ray(), Flower's RayBackend.terminate ends a run's actors but not Ray; on leaving,
    Flower's own terminate is back and Ray is shut down. If a Flower upgrade changes terminate's shape,
    the campaign's premise is gone: this fails first."""
    import inspect

    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    source = inspect.getsource(RayBackend.terminate)
    assert "self.pool.terminate_all_actors()" in source and "ray.shutdown()" in source
    fake = fake_ray([])
    flowers = RayBackend.terminate

    class Pool:
        terminated = 0

        def terminate_all_actors(self) -> None:
            self.terminated += 1

    backend = RayBackend.__new__(RayBackend)
    backend.pool = Pool()
    with runner.one_ray():
        assert RayBackend.terminate is not flowers and runner._shared_ray_dir is not None
        with pytest.raises(RuntimeError, match="already active"), runner.one_ray():
            pass
        backend.terminate()
        assert backend.pool.terminated == 1 and fake.shutdowns == 0  # the run's actors went, Ray stayed
    assert RayBackend.terminate is flowers and runner._shared_ray_dir is None
    assert fake.shutdowns == 1
