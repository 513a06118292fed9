"""Finishing a distributed run (`--master` + `--worker`s, or `--processes N`) with every
count in. Workers send the master their checks' counts with each stats report. At the
end of `--run-time`, though, locust's master tells its workers to quit and waits 0.5 s for
their last reports, while the calls still running on them end gracefully within
`--stop-timeout`: their messages would go uncounted. So when the test stops with workers
still running users, the master first asks each worker to finish (stop its users the
graceful way) and waits, bounded, for each one's final counts."""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner

from loadtest.signaling.delivery import Tally

log = logging.getLogger("rendezvous.loadtest")

REPORT_KEY = "rendezvous_checks"  # in locust's periodic worker reports
FINISH = "rendezvous_finish"  # master -> workers: stop your users, then send your counts
FINISHED = "rendezvous_finished"  # worker -> master: stopped; the counts not yet sent
SPARE_SECONDS = 10.0  # on top of --stop-timeout, for the messages themselves
POLL_SECONDS = 0.1


class Finisher:
    """The master's or a worker's part (nothing to do in a local run)."""

    def __init__(self, environment: Environment, tally: Tally) -> None:
        self.environment = environment
        self.tally = tally
        self.finished: set[str] = set()
        runner = environment.runner
        events = environment.events
        if isinstance(runner, MasterRunner):
            runner.register_message(FINISHED, self._on_finished)
            events.worker_report.add_listener(self._on_report)  # type: ignore[no-untyped-call]
            events.test_stop.add_listener(self._finish_workers)  # type: ignore[no-untyped-call]
        elif isinstance(runner, WorkerRunner):
            runner.register_message(FINISH, self._on_finish, concurrent=True)
            events.report_to_master.add_listener(self._report)  # type: ignore[no-untyped-call]

    # On a worker.

    def _report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        data[REPORT_KEY] = self.tally.take_increments()

    def _on_finish(self, environment: Environment, msg: Message, **_: Any) -> None:
        runner = environment.runner
        assert isinstance(runner, WorkerRunner)
        runner.stop()  # graceful: each user ends its call, within --stop-timeout
        runner.send_message(FINISHED, self.tally.take_increments())

    # On the master.

    def _on_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        self.tally.merge(data.get(REPORT_KEY, {}))

    def _on_finished(self, environment: Environment, msg: Message, **_: Any) -> None:
        self.tally.merge(msg.data or {})
        self.finished.add(msg.node_id)

    def _finish_workers(self, environment: Environment, **_: Any) -> None:
        runner = environment.runner
        assert isinstance(runner, MasterRunner)
        if runner.user_count == 0:  # stopped the usual way: the workers are done already
            return
        workers = runner.worker_count
        log.info("asking %d worker(s) to finish their calls", workers)
        runner.send_message(FINISH)
        deadline = time.monotonic() + environment.stop_timeout + SPARE_SECONDS
        while len(self.finished) < workers and time.monotonic() < deadline:
            gevent.sleep(POLL_SECONDS)
        if len(self.finished) < workers:
            log.warning(
                "%d of %d worker(s) did not finish in time: their last counts are missing",
                workers - len(self.finished),
                workers,
            )
