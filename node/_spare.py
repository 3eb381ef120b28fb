"""The spare job process: it waits, already in a job's cgroup, to become that job's exec chain.

`node.spare` runs this file as `python -I -S _spare.py CONTROL STATUS` (two pipe fds) ahead of
any job. It imports only modules built into the interpreter, never runs a shell and does
nothing but this: say it is ready (one byte on STATUS), read one instruction from CONTROL
until its end (at most `MAX_INSTRUCTION` bytes), check it, chdir() and execve(). STATUS is
close-on-exec, so its end of file without a word tells the node that the exec succeeded, as
subprocess's error pipe does; if the exec cannot happen, the errno is written there instead.
An empty instruction (the node closed CONTROL, or died) ends the spare.
"""

from __future__ import annotations

# The builtin `_signal` (no stub for mypy) rather than `signal`, which imports enum: ~10 ms
# of CPU a spare, beside a job that has just started.
import _signal  # type: ignore[import-not-found]
import errno
import os
import sys

READY = b"+"
MAX_INSTRUCTION = 1 << 20  # far more than a chain, its arguments and the job's environment take


def decode_instruction(data: bytes) -> tuple[list[bytes], dict[bytes, bytes], bytes]:
    """(argv, env, cwd) from `node.spare.encode_instruction`'s bytes; ValueError if they are not."""
    fields = data.split(b"\0")
    if len(fields) < 4 or fields.pop() != b"":
        raise ValueError("not an instruction")
    cwd, count = fields[0], int(fields[1])
    argv, variables = fields[2 : 2 + count], fields[2 + count :]
    if count < 1 or len(argv) != count or not os.path.isabs(argv[0]):
        raise ValueError("not an instruction")
    env = {}
    for variable in variables:
        name, equals, value = variable.partition(b"=")
        if not name or not equals:
            raise ValueError("not an instruction")
        env[name] = value
    return argv, env, cwd


def _read_instruction(control: int) -> bytes:
    chunks, size = [], 0
    while chunk := os.read(control, 65536):
        size += len(chunk)
        if size > MAX_INSTRUCTION:
            raise OSError(errno.E2BIG, os.strerror(errno.E2BIG))
        chunks.append(chunk)
    return b"".join(chunks)


def main(control: int, status: int) -> None:
    # Python's own start ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across
    # exec: the job gets them back at their defaults, as subprocess's restore_signals gives them.
    for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):
        _signal.signal(signum, _signal.SIG_DFL)
    os.set_inheritable(status, False)  # pass_fds made it inheritable: its EOF must mean exec
    os.write(status, READY)
    try:
        data = _read_instruction(control)
        if not data:
            os._exit(0)  # the node has gone, or no longer wants a spare
        try:
            argv, env, cwd = decode_instruction(data)
        except ValueError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        os.chdir(cwd)
        os.close(control)
        os.execve(argv[0], argv, env)
    except OSError as exc:
        os.write(status, str(exc.errno or errno.EINVAL).encode())
    os._exit(127)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
