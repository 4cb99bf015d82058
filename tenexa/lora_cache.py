"""The LoRA URL cache: verified LoRA files, content-addressed, shared by jobs and by workers on one volume.

Layout (``root`` is a folder directly inside a ``loras`` folder ComfyUI lists, so ComfyUI sees each file as
``<root name>/<sha256>.safetensors`` with no link and no restart: its file list is re-read when a folder's
mtime changes):

    <root>/<sha256>.safetensors      the files; a file's mtime is its last use (least recently used go first)
    <root>/.tenexa/urls/<sha256(url)>.json   which file a URL gave ({"sha256", "size"}; the URL itself is not stored)
    <root>/.tenexa/locks/<sha256(url)>.lock  held while that URL downloads: concurrent jobs download it once
    <root>/.tenexa/cache.lock                held while a file is added or evicted
    <root>/.tenexa/parts/*.part              downloads in progress (ComfyUI ignores these extensions)

Every write is a rename of a finished file, so a reader never sees half a file. Locks are ``flock`` on lock
files (threads and processes alike; across machines only where the volume's filesystem honours flock,
and where it does not, two workers may both download a URL and the second rename wins with identical bytes).
A file used in the last ``keep_recent_s`` seconds (a job's whole time budget) is never evicted: it may be
in use by a running job on any worker. The bound can therefore be passed by the LoRAs of running jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tenexa.config import Settings
from tenexa.errors import ErrorCode, TenexaError
from tenexa.files import volume_mounted
from tenexa.logs import log

CACHE_FOLDER = "tenexa-url"
SUFFIX = ".safetensors"
STALE_PART_S = 3600.0  # a .part this old belongs to a download that died with its worker


@dataclass(frozen=True)
class CacheEntry:
    sha256: str
    size: int
    path: Path
    last_used: float  # epoch seconds


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8")).hexdigest()


def default_root(settings: Settings) -> tuple[Path, bool]:
    """(cache folder, whether it is on the network volume): the volume when one is mounted, else local disk."""
    if settings.lora_cache_dir is not None:
        root = Path(settings.lora_cache_dir)
        return root, root.is_relative_to(settings.volume_root)
    if volume_mounted(settings.volume_root):
        return settings.volume_root / "models" / "loras" / CACHE_FOLDER, True
    return settings.comfy_root / "models" / "loras" / CACHE_FOLDER, False


class LoraCache:
    def __init__(self, root: Path, *, limit_bytes: int, keep_recent_s: float, on_volume: bool = False):
        self.root = Path(root)
        self.limit_bytes = limit_bytes
        self.keep_recent_s = keep_recent_s
        self.on_volume = on_volume
        self._meta = self.root / ".tenexa"

    @classmethod
    def from_settings(cls, settings: Settings) -> LoraCache:
        root, on_volume = default_root(settings)
        return cls(root, limit_bytes=int(settings.lora_cache_gb * 1e9), keep_recent_s=settings.exec_timeout, on_volume=on_volume)

    # ------------------------------------------------------------------------------------- names and paths

    def comfy_name(self, sha256: str) -> str:
        """The name ComfyUI's ``loras`` list shows for a cached file."""
        return f"{self.root.name}/{sha256}{SUFFIX}"

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}{SUFFIX}"

    def _folder(self, name: str) -> Path:
        folder = self._meta / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TenexaError(ErrorCode.LORA_FETCH_FAILED, f"cannot write the LoRA cache at {self.root}: {exc.strerror}") from None
        return folder

    def new_part(self) -> Path:
        """A fresh path for a download in progress, on the cache's filesystem (so that the final rename is atomic)."""
        return self._folder("parts") / f"{uuid.uuid4().hex}.part"

    # ------------------------------------------------------------------------------------- lookups

    def lookup(self, url: str) -> CacheEntry | None:
        """The cached file ``url`` gave, marked as used now; None when the URL was never fetched or was evicted."""
        try:
            record = json.loads((self._meta / "urls" / f"{url_key(url)}.json").read_text(encoding="utf-8"))
            sha256, size = str(record["sha256"]), int(record["size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return self._use(sha256, size)

    def _use(self, sha256: str, size: int) -> CacheEntry | None:
        path = self.path(sha256)
        with contextlib.suppress(OSError):  # a read-only volume still serves its files, unranked
            os.utime(path)  # the file's mtime is its last use: this is what keeps it from eviction
        try:
            stat = path.stat()
        except OSError:
            return None
        if stat.st_size != size:
            return None
        return CacheEntry(sha256, size, path, stat.st_mtime)

    def entries(self) -> list[CacheEntry]:
        found = []
        try:
            candidates = list(self.root.glob(f"*{SUFFIX}"))
        except OSError:
            return []
        for path in candidates:
            try:
                stat = path.stat()
            except OSError:
                continue
            found.append(CacheEntry(path.name[: -len(SUFFIX)], stat.st_size, path, stat.st_mtime))
        return sorted(found, key=lambda e: e.last_used)

    def report(self) -> dict:
        entries = self.entries()
        return {
            "dir": str(self.root),
            "on_volume": self.on_volume,
            "comfy_prefix": f"{self.root.name}/",
            "entries": len(entries),
            "bytes": sum(e.size for e in entries),
            "limit_bytes": self.limit_bytes,
        }

    # ------------------------------------------------------------------------------------- locks

    @contextlib.contextmanager
    def url_lock(self, url: str, *, timeout: float, field: str) -> Iterator[None]:
        """Held while ``url`` downloads; a second job waits here, then finds the file with ``lookup``."""
        with _flock(self._folder("locks") / f"{url_key(url)}.lock", timeout=timeout, remove=True) as acquired:
            if not acquired:
                raise TenexaError(ErrorCode.LORA_FETCH_FAILED,
                                  f"{field}: another job was still downloading this URL after {timeout:g} s")
            yield

    # ------------------------------------------------------------------------------------- adding

    def add(self, part: Path, *, sha256: str, url: str) -> CacheEntry:
        """Move a verified download into the cache (evicting to make room) and remember which URL gave it."""
        size = part.stat().st_size
        with _flock(self._meta / "cache.lock", timeout=60.0, remove=False) as acquired:
            if not acquired:
                raise TenexaError(ErrorCode.LORA_FETCH_FAILED, "the LoRA cache stayed locked for 60 s")
            self._make_room(0 if self.path(sha256).exists() else size)  # same bytes from another URL: no growth
            os.replace(part, self.path(sha256))
        self._write_record(url, sha256, size)
        entry = self._use(sha256, size)
        if entry is None:  # evicted between the rename and now: only with a bound smaller than one file
            raise TenexaError(ErrorCode.LORA_FETCH_FAILED, "the LoRA cache lost the file it just stored")
        return entry

    def _write_record(self, url: str, sha256: str, size: int) -> None:
        urls = self._folder("urls")
        tmp = self._folder("parts") / f"{uuid.uuid4().hex}.json.part"
        tmp.write_text(json.dumps({"sha256": sha256, "size": size}), encoding="utf-8")
        os.replace(tmp, urls / f"{url_key(url)}.json")

    def _make_room(self, incoming: int) -> None:
        """Evict least recently used files until ``incoming`` more bytes fit; recently used files stay."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        evicted = False
        for entry in entries:
            if total + incoming <= self.limit_bytes:
                break
            try:  # re-read: a job may have just started using it (lookups take no lock)
                last_used = entry.path.stat().st_mtime
            except OSError:
                total -= entry.size
                continue
            if time.time() - last_used < self.keep_recent_s:
                continue
            entry.path.unlink(missing_ok=True)
            total -= entry.size
            evicted = True
            log.info("LoRA cache: evicted %s (%d bytes, unused for %.0f s)", entry.sha256[:12], entry.size, time.time() - last_used)
        if total + incoming > self.limit_bytes:
            log.warning("LoRA cache: %d bytes in files used in the last %.0f s; the bound %d is passed until they age",
                        total, self.keep_recent_s, self.limit_bytes)
        self._sweep(records=evicted)

    def _sweep(self, *, records: bool) -> None:
        """Drop what dead workers left (old .part files) and, after an eviction, URL records of evicted files."""
        now = time.time()
        for part in (self._meta / "parts").glob("*.part"):
            with contextlib.suppress(OSError):
                if now - part.stat().st_mtime > STALE_PART_S:
                    part.unlink()
        if not records:
            return
        present = {e.sha256 for e in self.entries()}
        for record in (self._meta / "urls").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                if json.loads(record.read_text(encoding="utf-8"))["sha256"] not in present:
                    record.unlink()


@contextlib.contextmanager
def _flock(path: Path, *, timeout: float, remove: bool) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` within ``timeout`` (yields False when it was not had in time).

    With ``remove`` the holder deletes the lock file before releasing it, so lock files exist only while
    in use; a waiter that then gets the lock on the deleted file notices (the path names another file or
    none) and starts over on the current one.
    """
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _acquire(fd, deadline):
            os.close(fd)
            yield False
            return
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this file: lock the current one
    try:
        yield True
    finally:
        if remove:
            path.unlink(missing_ok=True)
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, deadline: float) -> bool:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
