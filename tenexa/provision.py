"""Model provisioning: make every selected entry of ``models.json`` present before ComfyUI starts.

For each selected entry the file is looked for, with the manifest's size, under ``<root>/models/<folder>/``
for the destination root, ``COMFY_ROOT`` and ``VOLUME_ROOT`` (the network volume); what is found is used as is.
What is missing is downloaded into ``<dest>/models/<folder>/`` (``dest`` defaults to ``COMFY_ROOT``):
several files at once, each into ``<file>.part``, resumed with an HTTP ``Range`` request after a cut,
checked against the manifest's size and sha256, and renamed to its final name only when complete. A bad
checksum deletes the ``.part`` so that the next start downloads it afresh.

Why a small loop over ``requests`` and not ``huggingface_hub``: the manifest holds plain URLs (Hugging Face
``resolve`` links today, possibly any host tomorrow), and every behaviour above is tested against a local
plain HTTP server, which ``hf_hub_download`` cannot talk to without imitating the Hub's API (``X-Repo-Commit``,
``X-Linked-Etag``, Xet storage). ``huggingface_hub`` would also keep its own metadata and cache layout beside the
model folders. What it would add is Xet/multi-connection transfer for a single large file; this module gets its
parallelism from downloading several files at once instead (see ``bench/download.py`` for the figures).

``HF_TOKEN`` is sent as a Bearer token only to huggingface.co / hf.co hosts; ``requests`` drops it when the
Hub redirects to its CDN on another host.

Entries with a ``pack_path`` (files a node pack reads from its own folder, e.g. the RIFE checkpoint) are then
linked from wherever they were found to ``COMFY_ROOT/<pack_path>``, for every entry of the manifest whatever
``--models`` selected (``--link-only`` does just that). An ``optional`` entry that cannot be provisioned is
a warning, not a failure: the feature that needs it falls back (interpolation uses ffmpeg).

Run: ``python -m tenexa.provision [--models all|none|name,name] [--dest ROOT] [--check] [--link-only]``. Exit
status 0 when every selected non-optional file is present afterwards, 1 when any is not (one line per
failure), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests

from tenexa.config import REPO_ROOT
from tenexa.files import sha256_file
from tenexa.manifest import ManifestError, ModelEntry, parse_manifest

log = logging.getLogger("tenexa.provision")

HF_HOSTS = ("huggingface.co", "hf.co")
# A cut connection loses the chunk being read when it breaks, so the chunk stays small.
CHUNK_BYTES = 256 * 1024
HASH_BLOCK_BYTES = 8 * 1024 * 1024
PART_SUFFIX = ".part"


class ProvisionError(Exception):
    """One model could not be provisioned; the message is a single line naming the model."""


def model_path(root: Path, entry: ModelEntry) -> Path:
    """Where ``entry`` lives below a ComfyUI-style root: ``<root>/models/<folder>/<file>``."""
    return Path(root) / "models" / entry.relative_path


@dataclass
class Outcome:
    entry: ModelEntry
    path: Path | None = None
    status: str = "missing"  # present | downloaded | missing | failed
    downloaded_bytes: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        """Required files that are not there; an optional entry's absence only disables what needs it."""
        return [o for o in self.outcomes if o.status in ("failed", "missing") and not o.entry.optional]

    @property
    def downloaded_bytes(self) -> int:
        return sum(o.downloaded_bytes for o in self.outcomes)


# --- manifest -----------------------------------------------------------------------------------------


def load_manifest(path: Path) -> list[ModelEntry]:
    """``models.json`` as ``tenexa.manifest`` reads it, plain ``http://`` URLs admitted (local mirrors, tests)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProvisionError(f"manifest {path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ProvisionError(f"manifest {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise ProvisionError(f'manifest {path}: must be an object with a "models" list')
    try:
        return list(parse_manifest(data, allow_http=True))
    except ManifestError as exc:
        raise ProvisionError(f"manifest {path}: {exc}") from None


def select(entries: Sequence[ModelEntry], spec: str) -> list[ModelEntry]:
    """``all``, ``none`` or a comma list of entry names (unknown names are an error, listing the known ones)."""
    spec = spec.strip()
    if spec in ("", "all"):
        return list(entries)
    if spec == "none":
        return []
    by_name = {e.name: e for e in entries}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in by_name]
    if unknown:
        raise ProvisionError(f"MODELS names unknown entries {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[w] for w in dict.fromkeys(wanted)]


# --- helpers ------------------------------------------------------------------------------------------


def auth_headers(url: str, token: str | None) -> dict[str, str]:
    """The Bearer header for Hugging Face hosts only: a token must never reach an arbitrary URL."""
    host = (urlsplit(url).hostname or "").lower()
    if token and any(host == h or host.endswith("." + h) for h in HF_HOSTS):
        return {"Authorization": f"Bearer {token}"}
    return {}


def find_existing(entry: ModelEntry, roots: Iterable[Path]) -> Path | None:
    """First ``<root>/models/<folder>/<file>`` with the manifest's size (any size when the manifest has none)."""
    for root in roots:
        path = model_path(root, entry)
        try:
            if path.is_file() and (entry.size is None or path.stat().st_size == entry.size):
                return path
        except OSError:
            continue
    return None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mibps(n: float, seconds: float) -> str:
    return f"{n / 2**20 / max(seconds, 1e-6):.1f} MiB/s"


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


# --- one file -----------------------------------------------------------------------------------------


class _Retry(Exception):
    """A transient failure: try again from what is in the .part file."""


@dataclass
class Downloader:
    token: str | None = None
    retries: int = 5
    backoff: float = 1.0
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    progress_every: float = 10.0
    clock: Callable[[], float] = time.monotonic

    def fetch(self, entry: ModelEntry, dest_root: Path) -> int:
        """Download ``entry`` to ``dest_root/models/<folder>/<file>``; returns the bytes transferred."""
        final = model_path(dest_root, entry)
        part = final.with_name(final.name + PART_SUFFIX)
        final.parent.mkdir(parents=True, exist_ok=True)
        transferred = 0
        with requests.Session() as session:
            for attempt in range(self.retries + 1):
                try:
                    transferred += self._attempt(session, entry, part)
                    break
                except _Retry as exc:
                    if attempt == self.retries:
                        raise ProvisionError(f"model {entry.name!r}: gave up after {attempt + 1} attempts: {exc}") from None
                    delay = self.backoff * 2**attempt
                    log.warning("%s: %s; retrying in %.0f s (attempt %d of %d)", entry.name, exc, delay, attempt + 2, self.retries + 1)
                    time.sleep(delay)
        self._verify(entry, part)
        os.replace(part, final)
        return transferred

    def _attempt(self, session: requests.Session, entry: ModelEntry, part: Path) -> int:
        offset = part.stat().st_size if part.exists() else 0
        if entry.size is not None and offset > entry.size:
            part.unlink()
            offset = 0
        if entry.size is not None and offset == entry.size:
            return 0  # a previous run got every byte but stopped before the rename
        headers = auth_headers(entry.url, self.token)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            resp = session.get(entry.url, headers=headers, stream=True, timeout=(self.connect_timeout, self.read_timeout))
        except requests.RequestException as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        with resp:
            self._check_status(entry, resp, offset, part)
            if resp.status_code == 416:
                return 0
            if offset and resp.status_code == 206:
                mode = "ab"
                log.info("%s: resuming at %s", entry.name, _gib(offset))
            else:
                mode, offset = "wb", 0
            total = entry.size
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit():
                sent_total = offset + int(length)
                if total is not None and sent_total != total:
                    raise ProvisionError(
                        f"model {entry.name!r}: size mismatch, manifest says {total} bytes, server sends {sent_total} ({entry.url})"
                    )
                total = sent_total
            received = self._stream(entry, resp, part, mode, offset, total)
        have = offset + received
        if total is not None and have < total:
            raise _Retry(f"connection ended at {have} of {total} bytes")
        return received

    def _check_status(self, entry: ModelEntry, resp: requests.Response, offset: int, part: Path) -> None:
        code = resp.status_code
        if code in (200, 206):
            return
        if code == 416 and offset:
            if resp.headers.get("Content-Range", "").strip() == f"bytes */{offset}":
                return  # the .part already holds the whole file; _attempt sees an empty 416 body as done
            part.unlink(missing_ok=True)  # our .part is not a prefix of what the server has: start over
            raise _Retry("server refused the resume range (416); restarting from zero")
        if code in (408, 425, 429) or code >= 500:
            raise _Retry(f"HTTP {code} {resp.reason}")
        hint = ""
        if code in (401, 403):
            hint = (
                "; set HF_TOKEN for a gated or private Hugging Face file"
                if not self.token
                else "; check that HF_TOKEN may read this repository"
            )
        raise ProvisionError(f"model {entry.name!r}: HTTP {code} {resp.reason} for {entry.url}{hint}")

    def _stream(self, entry: ModelEntry, resp: requests.Response, part: Path, mode: str, offset: int, total: int | None) -> int:
        received = 0
        started = last = self.clock()
        try:
            with open(part, mode) as fh:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    fh.write(chunk)
                    received += len(chunk)
                    now = self.clock()
                    if now - last >= self.progress_every:
                        last = now
                        have = offset + received
                        pct = f" ({100 * have / total:.0f}%)" if total else ""
                        of = f" / {_gib(total)}" if total else ""
                        log.info("%s: %s%s%s at %s", entry.name, _gib(have), of, pct, _mibps(received, now - started))
        except requests.RequestException as exc:  # checked first: requests' errors are OSErrors too
            raise _Retry(f"transfer cut at {offset + received} bytes ({type(exc).__name__})") from None
        except OSError as exc:  # disk full, permission denied: retrying will not help
            raise ProvisionError(f"model {entry.name!r}: cannot write {part}: {exc.strerror or exc}") from None
        return received

    def _verify(self, entry: ModelEntry, part: Path) -> None:
        size = part.stat().st_size
        if entry.size is not None and size != entry.size:
            part.unlink()
            raise ProvisionError(f"model {entry.name!r}: size mismatch, expected {entry.size} bytes, got {size}; partial file removed")
        if entry.sha256:
            digest = sha256_file(part, HASH_BLOCK_BYTES)
            if digest != entry.sha256:
                part.unlink()
                raise ProvisionError(f"model {entry.name!r}: sha256 mismatch, expected {entry.sha256}, got {digest}; partial file removed")


# --- many files ---------------------------------------------------------------------------------------


def provision(
    entries: Sequence[ModelEntry],
    *,
    dest_root: Path,
    search_roots: Sequence[Path] = (),
    workers: int = 4,
    downloader: Downloader | None = None,
    check_only: bool = False,
) -> Report:
    """Use what exists, download what is missing (``workers`` files at once); never raises for one model."""
    downloader = downloader or Downloader()
    started = time.monotonic()
    report = Report()
    roots = list(dict.fromkeys([Path(dest_root), *map(Path, search_roots)]))
    unique = list({e.relative_path: e for e in entries}.values())
    todo: list[Outcome] = []
    for entry in unique:
        found = find_existing(entry, roots)
        outcome = Outcome(entry, path=found, status="present" if found else "missing")
        report.outcomes.append(outcome)
        if found:
            log.info("%s: present at %s", entry.name, found)
        else:
            todo.append(outcome)
    if check_only or not todo:
        for o in todo:
            o.error = f"model {o.entry.name!r}: missing (models/{o.entry.relative_path} under none of {', '.join(map(str, roots))})"
        report.seconds = time.monotonic() - started
        return report

    needed = sum(max(0, (o.entry.size or 0) - _part_size(model_path(dest_root, o.entry))) for o in todo)
    free = _free_bytes(Path(dest_root))
    if needed > free:
        log.error("not enough disk space: %s needed under %s, %s free", _gib(needed), dest_root, _gib(free))
        for o in todo:
            o.status = "failed"
            o.error = f"model {o.entry.name!r}: not downloaded, {_gib(needed)} needed under {dest_root} but only {_gib(free)} free"
        report.seconds = time.monotonic() - started
        return report

    log.info("downloading %d file(s), %s, %d at a time into %s", len(todo), _gib(needed), workers, dest_root)
    lock = threading.Lock()

    def run(outcome: Outcome) -> None:
        t0 = time.monotonic()
        try:
            outcome.downloaded_bytes = downloader.fetch(outcome.entry, Path(dest_root))
            outcome.status, outcome.path = "downloaded", model_path(dest_root, outcome.entry)
        except ProvisionError as exc:
            outcome.status, outcome.error = "failed", str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not hide the others' results
            outcome.status, outcome.error = "failed", f"model {outcome.entry.name!r}: {type(exc).__name__}: {exc}"
        outcome.seconds = time.monotonic() - t0
        with lock:
            if outcome.status == "downloaded":
                log.info(
                    "%s: done, %s in %.1f s (%s)",
                    outcome.entry.name,
                    _gib(outcome.downloaded_bytes),
                    outcome.seconds,
                    _mibps(outcome.downloaded_bytes, outcome.seconds),
                )
            else:
                log.error("%s", outcome.error)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="provision") as pool:
        list(pool.map(run, todo))
    report.seconds = time.monotonic() - started
    return report


def link_pack_files(entries: Sequence[ModelEntry], *, comfy_root: Path, search_roots: Sequence[Path]) -> list[Path]:
    """Link each entry with a ``pack_path`` to its first copy under ``search_roots``; returns the links made.

    A link that points elsewhere or at nothing is replaced (or removed when no copy exists, so that the worker
    sees the file as absent instead of letting the pack download it). A real file already at the pack path
    is left alone. Nothing happens when the node pack itself is not installed.
    """
    linked = []
    for entry in entries:
        if entry.pack_path is None:
            continue
        target = Path(comfy_root) / entry.pack_path
        pack = Path(comfy_root).joinpath(*Path(entry.pack_path).parts[:2])
        if not pack.is_dir():
            log.info("%s: node pack %s is not installed; nothing to link", entry.name, pack.name)
            continue
        found = find_existing(entry, search_roots)
        if target.is_symlink():
            if found is not None and target.resolve() == found.resolve():
                continue
            target.unlink()
        elif target.exists():
            log.info("%s: %s is a file of its own; left as it is", entry.name, target)
            continue
        if found is None:
            log.info("%s: not found under models/%s/ of %s; %s", entry.name, entry.folder,
                     ", ".join(map(str, search_roots)), "optional, so its feature falls back" if entry.optional else "missing")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(found.resolve())
        log.info("%s: linked %s -> %s", entry.name, target, found)
        linked.append(target)
    return linked


def _part_size(final: Path) -> int:
    part = final.with_name(final.name + PART_SUFFIX)
    return part.stat().st_size if part.exists() else 0


# --- command line -------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(prog="python -m tenexa.provision", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, default=Path(env.get("MODELS_MANIFEST") or REPO_ROOT / "models.json"))
    p.add_argument("--models", default=env.get("MODELS") or "all", help="all, none, or a comma list of manifest names (env MODELS)")
    p.add_argument("--comfy-root", type=Path, default=Path(env.get("COMFY_ROOT") or "/ComfyUI"))
    p.add_argument("--volume-root", type=Path, default=Path(env.get("VOLUME_ROOT") or "/runpod-volume"))
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(env["MODELS_DEST"]) if env.get("MODELS_DEST") else None,
        help="root that receives downloads as <dest>/models/<folder>/ (env MODELS_DEST; default COMFY_ROOT)",
    )
    p.add_argument("--workers", type=int, default=int(env.get("PROVISION_WORKERS") or 4), help="files downloaded at once")
    p.add_argument("--check", action="store_true", help="only report what is present; exit 1 if anything is missing")
    p.add_argument("--link-only", action="store_true", help="only link files that node packs read from their own folders")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s provision %(levelname)s %(message)s")
    try:
        manifest = load_manifest(args.manifest)
        entries = [] if args.link_only else select(manifest, args.models)
    except ProvisionError as exc:
        log.error("%s", exc)
        return 2
    dest = args.dest or args.comfy_root
    roots = list(dict.fromkeys([dest, args.comfy_root, args.volume_root]))
    if not entries:
        if not args.link_only:
            log.info("no models selected (MODELS=%s)", args.models)
        link_pack_files(manifest, comfy_root=args.comfy_root, search_roots=roots)
        return 0
    report = provision(
        entries,
        dest_root=dest,
        search_roots=[args.comfy_root, args.volume_root],
        workers=args.workers,
        downloader=Downloader(token=os.environ.get("HF_TOKEN") or None),
        check_only=args.check,
    )
    present = sum(o.status == "present" for o in report.outcomes)
    downloaded = sum(o.status == "downloaded" for o in report.outcomes)
    log.info(
        "%d present, %d downloaded (%s in %.1f s, %s), %d failed",
        present,
        downloaded,
        _gib(report.downloaded_bytes),
        report.seconds,
        _mibps(report.downloaded_bytes, report.seconds),
        len(report.failed),
    )
    if args.check:
        for o in report.failed:
            log.error("%s", o.error)
    for o in report.outcomes:
        if o.entry.optional and o.status in ("failed", "missing"):
            log.warning("optional model %s not provisioned: %s", o.entry.name, o.error or "missing")
    if not args.check:
        link_pack_files(manifest, comfy_root=args.comfy_root, search_roots=roots)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
