"""One process per run directory: an OS lock on `run.lock` in the run directory.

`hold(output_dir)` takes an exclusive `fcntl.flock` on the directory's `run.lock` for as long as
the run lasts, and writes there who holds it (process id, host, start time). A second run on
the same directory is refused in one line that names that process. The kernel releases the lock
when the process ends, however it ends (an exception, Ctrl-C, `kill -9`), so the same command
then resumes the run; the file itself stays (removing it while another process waits for it
would let two processes hold two different files).

Under `--distribute=multi_worker` each worker locks its own run directory (the chief
`output_dir`, the others `output_dir/workers/<task>`, `gdw_tf.runs.distribute.worker_config`).
"""

import contextlib
import datetime
import fcntl
import os
import socket

LOCK_FILE = "run.lock"


@contextlib.contextmanager
def hold(output_dir: str):
    """Holds the lock of `output_dir` (made if missing) while the block runs.

    Raises:
      ValueError: if another process holds it, naming that process.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        descriptor = os.open(os.path.join(output_dir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # Not a directory one may write to: the run refuses it in its own words.
        yield
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
            raise ValueError(
                f"--output_dir={output_dir} is in use by {holder or 'another process'}; wait "
                "for that run to end (or stop it), then rerun this command to resume it, or "
                "choose another --output_dir."
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(descriptor, 0)
        os.pwrite(
            descriptor,
            f"process {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(),
            0,
        )
        yield
    finally:
        os.close(descriptor)  # Releases the lock.
