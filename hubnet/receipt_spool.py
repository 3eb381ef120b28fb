"""The caller's check of a paid job's receipt, and the spool it is kept in until the store
takes it (`hubnet.receipt_store`).

A receipt is checked as it arrives (`keep_receipt`): signed by the node that was called,
for this caller, for this job, at the Exit's cost. A receipt that fails, or a paid job
without one, is said on stderr at once and kept as a problem, never dropped.

This is on the call path of every paid call, so it only appends one record to a spool file
(`receipts.spool`, one write with O_APPEND, so concurrent calls do not interleave): no
SQLite, and none of the store's classes.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack

from hubnet.call_machine import CallResult
from hubnet.identity.keys import fingerprint
from hubnet.node.receipts import InvalidReceipt, JobReceipt, verify

SPOOL_FILE = "receipts.spool"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def keep_receipt(
    data_dir: Path | None, result: CallResult, caller: bytes, warn: Callable[[str], None] = _stderr
) -> JobReceipt | None:
    """Check a finished call's receipt and spool it in `data_dir` (None: check only); None
    (and a warning, and a problem kept) when it is missing or wrong, or for a free job,
    which has none."""
    if result.receipt is None and result.terms.held == 0:
        return None
    receipt: JobReceipt | None = None
    problem = ""
    if result.receipt is None:
        problem = f"the node sent no receipt for paid job {result.job_id} (cost {result.exit.cost} msat)"
    else:
        try:
            receipt = verify(
                result.receipt, node=result.node, caller=caller, job_id=result.job_id, cost=result.exit.cost
            )
        except InvalidReceipt as exc:
            problem = f"bad receipt for job {result.job_id}: {exc}"
    if data_dir is not None:
        _spool(data_dir, [time.time(), result.node, result.job_id, result.receipt or b"", problem])
    if problem:
        warn(f"hubnode: WARNING: node {fingerprint(result.node)}: {problem}; kept (see `hubnode receipts`)")
    return receipt


def _spool(data_dir: Path, entry: list[object]) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / SPOOL_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, msgpack.packb(entry))
    finally:
        os.close(fd)
