"""The analysts' copy of the DuckDB file (data/crm.duckdb -> data/crm.analytics.duckdb), made by a process of its
own. Standard library only: it runs as a script, `python crm/analytics_copy.py now|after DB TARGET [FD]`, so it
starts in ~20 ms.

Why a process of its own: DuckDB keeps its writer's lock as a POSIX record lock on the file, and POSIX drops every
such lock a process holds on a file as soon as that process closes *any* descriptor of it. A run that copied the file
itself would lose its lock mid-run, and a second writer could open the file while the run still had it open.

- `now`: the writer that runs it holds DuckDB's lock and waits for the copy (files under
  `[storage] analytics_copy_background_mb`).
- `after`: the writer goes on and ends without waiting (bigger files: copying 1 GB takes ~1.6 s here). This process
  first takes a shared lock on the file, the one DuckDB's read-only connections take: it is granted when the writer
  has closed the file, and no writer can open the file until the copy is made. FD is an inherited descriptor of
  TARGET.pending, locked by the writer: while this process holds it, a copy is on its way, and a later run of the
  same writer needs no second one.

Either way the copy is written under a name of its own, then swapped in by rename while TARGET.lock is held: an
analyst with the previous copy open keeps reading it, and `crm storage sql` waits for a copy on its way
(crm.db.analytics_ready). A failure is written to TARGET.log and leaves the previous copy in place.
"""

from __future__ import annotations

import fcntl
import glob
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path


def pending_path(target: Path) -> Path:
    return target.with_name(target.name + ".pending")


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + ".lock")


def log_path(target: Path) -> Path:
    """Where each failed copy is written, one line: '<ISO time> the analysts' copy of <db> failed: <why>'."""
    return target.with_name(target.name + ".log")


@contextmanager
def copying(target: Path):
    """TARGET.lock held while a copy is written and swapped in."""
    with open(lock_path(target), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def copy_allocated(src_fd: int, dst: Path) -> None:
    """Copy the open file `src_fd` to `dst` with dst's blocks allocated before the bytes are written (fallocate). On
    ext4 (and other file systems that allocate lazily), renaming a file over another makes the kernel allocate the
    blocks of the renamed file's unwritten data at the rename (auto_da_alloc): ~0.4 s for a 1 GB copy. Preallocated,
    the rename is instant; the bytes and the time to copy them are the same. `src_fd` stays open: closing a
    descriptor of the file would drop this process's lock on it."""
    size = os.fstat(src_fd).st_size
    with open(dst, "wb") as fout:
        try:
            os.posix_fallocate(fout.fileno(), 0, size)
        except OSError:
            pass                              # no preallocation here: the copy is the same, the rename may wait
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src_fd, fout.fileno(), size - done, done, done)
                if n == 0:
                    break
                done += n
        except OSError:                       # no copy_file_range across these file systems: through Python
            fout.seek(done)
            while done < size:
                chunk = os.pread(src_fd, min(1 << 20, size - done), done)
                if not chunk:
                    break
                fout.write(chunk)
                done += len(chunk)
        if done < size:                       # the source shrank: impossible while it is locked; refuse a short copy
            raise OSError(f"copying {dst.name} stopped at {done} of {size} bytes")


def swap_in(src_fd: int, target: Path) -> None:
    """Write the copy under a name of its own and rename it over TARGET; the replaced copy's blocks are freed by an
    `rm` of its own (on ext4, freeing a 1 GB file takes ~0.5 s)."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    # under TARGET.lock no other copy is being written: any other one was left by a copier that was killed
    for stale in target.parent.glob(f"{glob.escape(target.name)}.tmp*"):
        stale.unlink(missing_ok=True)
    try:
        copy_allocated(src_fd, tmp)
        try:
            os.link(target, target.with_name(f"{target.name}.old-{os.getpid()}-{time.monotonic_ns()}"))
        except OSError:
            pass                              # no previous copy (or no hard links here): the rename frees it
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    stale = sorted(str(p) for p in target.parent.glob(f"{glob.escape(target.name)}.old-*"))
    if stale:
        try:
            subprocess.Popen(["rm", "-f", "--", *stale], start_new_session=True, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except OSError:
            for p in stale:
                Path(p).unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    mode, db, target = argv[0], Path(argv[1]), Path(argv[2])
    try:
        with open(db, "rb") as held:
            if mode == "after":
                pending = int(argv[3])
                fcntl.lockf(held, fcntl.LOCK_SH)          # granted once the writer has closed the file
                with copying(target):
                    fcntl.flock(pending, fcntl.LOCK_UN)   # from here a reader waits on TARGET.lock
                    os.close(pending)
                    swap_in(held.fileno(), target)
            else:                                         # the writer holds the file and waits for this copy
                with copying(target):
                    swap_in(held.fileno(), target)
    except OSError as e:
        with open(log_path(target), "a") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} the analysts' copy of {db.name} failed: {e}\n")
        print(f"the analysts' copy of {db.name} failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
