"""The app guard: runs as `flwr-clientapp` on a member's node and refuses unapproved apps.

Open-source Flower lets whoever can submit a run ship code to every SuperNode (app verification
on nodes needs the enterprise SuperLink). `fedloom participant start` closes that hole: it puts
this guard first on the SuperNode's PATH under the name `flwr-clientapp`, which the SuperNode's
executor launches for every message. The guard pulls the task exactly like Flower's own
`flwr-clientapp`, but before the app bundle (FAB) is installed or imported it hashes the bundle
and compares it with the app hash in the member's kit. A mismatch fails the task with a clear
error: no line of the unapproved app ever runs on this machine.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys

log = logging.getLogger("fedloom.guard")
KIT_ENV = "FEDLOOM_KIT"


class UnapprovedApp(PermissionError):
    pass


def approved_hash() -> str:
    from fedloom.kits import load_member_kit

    kit_dir = os.environ.get(KIT_ENV)
    if not kit_dir:
        raise UnapprovedApp(f"{KIT_ENV} is not set: refusing to run any app")
    app_hash = load_member_kit(kit_dir).plan.app_hash
    if not app_hash:
        raise UnapprovedApp(f"the plan in {kit_dir} names no app hash: refusing to run any app")
    return app_hash


def check_bundle(content: bytes, expected: str) -> None:
    actual = hashlib.sha256(content).hexdigest()
    if actual != expected:
        raise UnapprovedApp(f"refusing app bundle {actual[:16]}…: this member agreed to run {expected[:16]}… only")


def install_guard() -> None:
    """Wrap Flower's FAB installation so every bundle is checked before it touches the disk."""
    import flwr.supernode.runtime.run_clientapp as runner

    expected = approved_hash()
    original = runner.install_from_fab

    def guarded_install(fab_content: bytes, *args, **kwargs):
        try:
            check_bundle(fab_content, expected)
        except UnapprovedApp as exc:
            log.error("%s", exc)
            raise
        return original(fab_content, *args, **kwargs)

    runner.install_from_fab = guarded_install


def time_the_app() -> None:
    """For `fedloom bench deployment` (FEDLOOM_TRIP_LOG set): note when this process started, when
    the app is loaded (imports done) and when its handler starts and ends."""
    import flwr.supernode.runtime.run_clientapp as runner

    from fedloom import triplog

    if not triplog.enabled():
        return
    triplog.note("clientapp_start", at=triplog.process_start_time())
    original = runner.get_load_client_app_fn

    def timed_loader(*args, **kwargs):
        load = original(*args, **kwargs)

        def loaded(*a, **kw):
            app = load(*a, **kw)
            triplog.note("app_loaded")

            def call(message, context):
                triplog.note("handler_start", kind=message.metadata.message_type)
                try:
                    return app(message=message, context=context)
                finally:
                    triplog.note("handler_end")

            return call

        return loaded

    runner.get_load_client_app_fn = timed_loader


def run() -> None:
    """What `flwr-clientapp` does, with the bundle check installed first (exits like Flower's)."""
    import fedloom  # noqa: F401  (telemetry off before flwr loads)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s fedloom-guard %(levelname)s %(message)s")
    try:
        install_guard()
        time_the_app()
    except UnapprovedApp as exc:
        log.error("%s", exc)
        sys.exit(3)
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    sys.argv[0] = "flwr-clientapp"
    flwr_clientapp()


def main() -> None:
    """Hand the task to the member's warm ClientApp process if it runs (participant.warm: a fork
    with everything imported, the same check in it), else run it here."""
    from .warm_client import delegate

    code = delegate(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    run()


if __name__ == "__main__":
    main()
