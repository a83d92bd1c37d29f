"""`peftbench prepare NAME`: fetch a registered dataset, verify, extract safely, convert and validate it.

<data root>/<name>/ afterwards holds (the Conv-LoRA CSV layout that `files.read_manifest` reads):
  train.csv, val.csv, test.csv or test_<set>.csv per card test set (columns image,label; paths relative to it),
  downloads/ (archives, `.part` while downloading), raw/<archive>/ (extracted), converted/<layout>/ (re-encoded files),
  prepared.json, written last and atomically: its presence means the folder is complete, so an interrupted
  prepare is simply run again (downloads resume, finished extractions are reused).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import stat
import tarfile
import time
import zipfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ..errors import UserError
from ..store.atomic import write_csv_atomic, write_json_atomic
from ..store.hashing import file_sha256
from .cards import DatasetCard, is_prepared, prepared_dir
from .layouts import LAYOUTS, Context, Splits, find_roots, merge
from .validate import Problem, drop_images, validate_pairs

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
CHUNK = 1 << 20
SHOWN_PROBLEMS = 20


# ---------------------------------------------------------------------------------------------- files


def verify(path: Path, sha256: str = "", size: int = 0, console: Console | None = None,
           digest: str | None = None) -> tuple[str, int]:
    """Check size and SHA-256 where known (mismatch: UserError naming both values); print them where not known,
    so they can be pasted into the card. `digest`: the file's SHA-256 when already computed. Returns (sha256, size)."""
    actual_size = path.stat().st_size
    if size and actual_size != size:
        raise UserError(f"{path}: size {actual_size} bytes, the card expects {size}; a different or damaged file")
    actual_sha = digest or file_sha256(path)
    if sha256 and actual_sha != sha256.lower():
        raise UserError(f"{path}: sha256 {actual_sha}, the card expects {sha256}; a different or damaged file")
    if console is not None and not (sha256 and size):
        console.print(f"{path.name}: no checksum in the card yet; record it there: "
                      f'sha256 = "{actual_sha}"  size = {actual_size}', soft_wrap=True)
    return actual_sha, actual_size


def _progress(console: Console | None) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, disable=console is None)


def download(url: str, dest: Path, sha256: str = "", size: int = 0, console: Console | None = None,
             attempts: int = 5, timeout: float = 60.0) -> Path:
    """Download `url` to `dest` through `dest.part`, resuming with HTTP Range after a dropped connection (within
    this call, up to `attempts` times, and across calls); verified before it is renamed to `dest`."""
    if dest.is_file():
        verify(dest, sha256, size, console)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last_error: Exception | None = None
    for _ in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        try:
            with urlopen(Request(url, headers={"Range": f"bytes={have}-"} if have else {}), timeout=timeout) as resp:
                if have and resp.status != 206:  # the server ignored the range: start again
                    have = 0
                length = int(resp.headers.get("Content-Length") or 0)
                total = have + length if length else None
                with open(part, "ab" if have else "wb") as f, _progress(console) as bar:
                    task = bar.add_task(dest.name, total=total, completed=have)
                    while block := resp.read(CHUNK):
                        f.write(block)
                        bar.advance(task, len(block))
            if total is None or part.stat().st_size >= total:
                break
            last_error = ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
        except HTTPError as err:
            if err.code == 416 and have:  # nothing left to send: the .part is complete
                break
            raise UserError(f"{url}: HTTP {err.code} {err.reason}") from None
        except (URLError, OSError, http.client.HTTPException) as err:
            last_error = err
        if console is not None:
            console.print(f"{dest.name}: download interrupted ({last_error}); resuming", style="yellow")
        time.sleep(0.2)
    else:
        raise UserError(f"{url}: download failed {attempts} times ({last_error}); run the same command again to "
                        f"resume from {part}")
    try:
        verify(part, sha256, size, console)
    except UserError:
        part.unlink()  # a complete but wrong file: resuming it can never succeed
        raise
    part.rename(dest)
    return dest


# ---------------------------------------------------------------------------------------------- extraction


def _archive_stem(path: Path) -> str:
    name = path.name
    return next((name[: -len(s)] for s in ARCHIVE_SUFFIXES if name.lower().endswith(s)), path.stem)


def _check_member(archive: Path, name: str, link: str | None = None, hardlink: bool = False) -> None:
    """Refuse a member whose path, or link target, would land outside the extraction folder."""
    def escapes(path: str) -> bool:
        posix = PurePosixPath(path.replace("\\", "/"))
        return posix.is_absolute() or bool(re.match(r"^[A-Za-z]:", path)) or ".." in posix.parts
    if escapes(name):
        raise UserError(f"{archive}: member {name!r} would be written outside the extraction folder; archive refused")
    if link is not None:
        # A symlink is relative to its own folder; a tar hardlink names another member (relative to the root).
        target = link if hardlink else os.path.normpath(os.path.join(os.path.dirname(name), link))
        if PurePosixPath(link).is_absolute() or escapes(target):
            raise UserError(f"{archive}: link {name!r} -> {link!r} points outside the extraction folder; "
                            "archive refused")


def _extract_zip(archive: Path, target: Path) -> None:
    """Members as files; a symlink member becomes a copy of the archive file it names (no link is ever created,
    so chained links cannot lead outside the target); one naming anything else is refused."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        links = {}
        for info in members:
            if stat.S_ISLNK(info.external_attr >> 16):
                links[info.filename] = zf.read(info).decode()
            _check_member(archive, info.filename, links.get(info.filename))
        files = {info.filename for info in members if not info.is_dir() and info.filename not in links}
        for info in members:
            if info.filename not in links:
                zf.extract(info, target)
                continue
            source = os.path.normpath(os.path.join(os.path.dirname(info.filename), links[info.filename]))
            if source not in files:
                raise UserError(f"{archive}: link {info.filename!r} -> {links[info.filename]!r} does not name a file "
                                "of the archive; archive refused")
            dest = target / info.filename
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(source))


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise UserError(f"{archive}: member {member.name!r} is a device or fifo; archive refused")
            _check_member(archive, member.name, member.linkname if member.issym() or member.islnk() else None,
                          hardlink=member.islnk())
        tf.extractall(target, filter="data")  # the standard library's own guard, on top of the checks above


def safe_extract(archive: Path, parent: Path) -> Path:
    """Extract into parent/<archive stem>/ (via a .partial folder, so an interrupted extraction is redone) and
    return it; an existing complete extraction is reused."""
    target = parent / _archive_stem(archive)
    if target.is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, partial)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, partial)
        else:
            raise UserError(f"{archive}: not a zip or tar archive; unpack it yourself and pass the folder with --from")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as err:
        shutil.rmtree(partial, ignore_errors=True)
        raise UserError(f"{archive}: damaged archive ({err}); download it again") from None
    except UserError:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(target)
    return target


# ---------------------------------------------------------------------------------------------- inputs


def _entry_for(card: DatasetCard, item: str) -> dict:
    """The card's [[sources]] entry for an input: the same URL, else the one file of that name; {} if none.

    Two entries may share a file name (the Conv-LoRA and the official SBU archives are both SBU-shadow.zip): then
    the one whose recorded checksum the file has, else none (nothing to verify against)."""
    base = Path(urlparse(item).path).name
    by_url = [e for e in card.sources if e.get("url") == item]
    by_name = [e for e in card.sources if base in (Path(urlparse(e.get("url", "")).path).name, e.get("file"))]
    if by_url or len(by_name) < 2:
        return (by_url or by_name or [{}])[0]
    if Path(item).is_file():
        sha256 = file_sha256(item)
        return next((e for e in by_name if e.get("sha256") == sha256), {})
    return {}


def _entry_by_layout(card: DatasetCard, folder: Path) -> dict:
    """The card's one [[sources]] entry whose release layout the extracted `folder` holds; {} if none or several."""
    layouts = list(dict.fromkeys(e["layout"] for e in card.sources if e.get("layout")))
    found = find_roots([folder], layouts)
    matches = [e for e in card.sources if e.get("layout") in found]
    return matches[0] if len(matches) == 1 else {}


def _manual_steps(card: DatasetCard, entries: list[dict]) -> str:
    lines, args = [f"{card.name}: these files need a manual download (a login or a click-through):"], []
    for entry in entries:
        if entry.get("url") and not entry.get("manual"):
            args.append(f"--from {entry['url']}")
        else:
            file = entry.get("file", f"<{entry['name']} archive or folder>")
            lines.append(f"  - {entry['name']}: {entry['manual']} (file: {file})")
            args.append(f"--from {file}")
    lines.append(f"then: peftbench prepare {card.name} {' '.join(args)}")
    return "\n".join(lines)


def _fetch(card: DatasetCard, inputs: list[str], out: Path, console: Console) -> tuple[list[Path], list[dict]]:
    """Folders to search for layouts (extracted archives, linked folders) and a record of each input."""
    folders, record = [], []
    for item in inputs:
        entry = _entry_for(card, item)
        slot = entry.get("name", "other")  # one folder per source: file names can repeat across sources
        if re.match(r"^https?://", item):
            path = download(item, out / "downloads" / slot / Path(urlparse(item).path).name, entry.get("sha256", ""),
                            entry.get("size", 0), console)
        else:
            path = Path(item).expanduser()
            if not path.exists():
                raise UserError(f"--from {item}: no such file, folder or http(s) URL")
        if path.is_dir():
            # Linked, not copied, so the CSVs' paths stay relative to the prepared folder.
            link = out / "raw" / slot / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if link.is_symlink():
                link.unlink()
            if link.exists():
                raise UserError(f"--from {item}: {link} already holds an extracted archive; prepare with --force")
            link.symlink_to(path.resolve(), target_is_directory=True)
            folders.append(link)
            record.append({"input": item, "kind": "folder", "path": str(path.resolve())})
            continue
        console.print(f"verifying {path.name}")
        named = bool(entry)
        sha256, size = verify(path, entry.get("sha256", ""), entry.get("size", 0), console if named else None)
        if not entry:  # a renamed file: the card's entry with this checksum, else the one whose layout it holds
            entry = next((e for e in card.sources if e.get("sha256", "").lower() == sha256), {})
        console.print(f"extracting {path.name}")
        folder = safe_extract(path, out / "raw" / slot)
        if not named:  # checked against the entry it turned out to be, as under that entry's own name
            entry = entry or _entry_by_layout(card, folder)
            verify(path, entry.get("sha256", ""), entry.get("size", 0), console, digest=sha256)
        folders.append(folder)
        record.append({"input": item, "kind": "archive", "source": entry.get("name"), "file": path.name,
                       "sha256": sha256, "size": size, "checksum_in_card": bool(entry.get("sha256"))})
    return folders, record


# ---------------------------------------------------------------------------------------------- prepare


def _choose_sources(card: DatasetCard, source: str | None) -> list[dict]:
    convlora = [s for s in card.sources if s.get("layout") == "convlora"]
    official = [s for s in card.sources if s.get("layout") != "convlora"]
    if source == "convlora" and not convlora:
        raise UserError(f"--source convlora: {card.name} has no Conv-LoRA archive; use --source official")
    if source == "official" and not official:
        raise UserError(f"--source official: {card.name} lists no official release in its card")
    return convlora if source == "convlora" or (source is None and convlora) else official


def _convert(card: DatasetCard, folders: list[Path], entries: list[dict], out: Path, binarize: bool,
             tile: int | None) -> tuple[str, Splits, dict, list[Problem]]:
    """(source kind, merged splits, notes per layout, bad pairs found while converting)."""
    layouts = list(dict.fromkeys(e["layout"] for e in entries))
    roots = find_roots(folders, layouts)
    if "convlora" in roots and "convlora" in layouts:  # given both (--from): the authors' archive decides
        roots = {"convlora": roots["convlora"]}
    if not roots:
        wanted = ", ".join(layouts)
        raise UserError(f"{card.name}: no known layout ({wanted}) found in {', '.join(map(str, folders))}; "
                        "see the card's [[sources]] for what each release looks like")
    parts, notes, bad, owner = [], {}, [], {}
    for name, found in roots.items():
        params = next((e for e in entries if e["layout"] == name), {})
        ctx = Context(card, out, params, binarize=binarize, tile=tile)
        part = LAYOUTS[name].convert(sorted(found), ctx)
        for split in part:
            if split.startswith("test") and split in owner:
                raise UserError(f"{card.name}: test set {split} comes from both {owner[split]} and {name}; "
                                "give one packaging of it")
            owner[split] = name
        parts.append(part)
        notes[name] = {"roots": [str(r.relative_to(out)) if r.is_relative_to(out) else str(r) for r in found],
                       **ctx.notes}
        bad += ctx.bad
    return ("convlora" if "convlora" in roots else "official"), merge(*parts), notes, bad


def _check_splits(card: DatasetCard, splits: Splits) -> list[str]:
    """Missing card test sets (listed in prepared.json); UserError when train, val or every test set is absent."""
    expected = ["test" if t == "test" else f"test:{t}" for t in card.test_names]
    unexpected = [s for s in splits if s.startswith("test") and s not in expected]
    if unexpected:
        raise UserError(f"{card.name}: the data gives test sets {unexpected}, the card lists {card.test_names}")
    missing = [s for s in ("train", "val") if not splits.get(s)]
    if missing or not any(splits.get(s) for s in expected):
        raise UserError(f"{card.name}: no {', '.join(missing) or 'test'} images found in the given data")
    return [t for t, s in zip(card.test_names, expected) if not splits.get(s)]


def _csv_name(split: str) -> str:
    return "test.csv" if split == "test" else f"test_{split.split(':', 1)[1]}.csv" if ":" in split else f"{split}.csv"


def _screen(card: DatasetCard, splits: Splits, bad: list[Problem], skip_bad: bool,
            console: Console) -> tuple[dict[str, pd.DataFrame], list[Problem]]:
    """The converted splits as (image, label) frames, every pair decoded and checked; bad pairs (with those the
    conversion found) fail the prepare, or with `skip_bad` are listed and left out. Returns (frames, problems)."""
    order = ["train", "val"] + [s for s in splits if s.startswith("test")]
    frames = {s: pd.DataFrame({"image": [str(i) for i, _ in splits[s]], "label": [str(m) for _, m in splits[s]]})
              for s in order if splits.get(s)}
    console.print(f"validating {sum(map(len, frames.values()))} pairs")
    problems = bad + [p for s, f in frames.items()
                      for p in validate_pairs(f, card.kind, card.num_classes, s, full_decode=True)]
    if problems:
        for problem in problems[:SHOWN_PROBLEMS]:
            console.print(f"  {problem}", style="red" if not skip_bad else "yellow")
        if len(problems) > SHOWN_PROBLEMS:
            console.print(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
        if not skip_bad:
            raise UserError(f"{card.name}: {len(problems)} bad image/label pairs (listed above); fix them, or "
                            "prepare again with --skip-bad to exclude them (and --binarize for anti-aliased masks)")
        frames = {s: drop_images(f, [p.image for p in problems if p.split == s]) for s, f in frames.items()}
    return frames, problems


def prepare(card: DatasetCard, inputs: list[str] | None = None, source: str | None = None,
            data_root: Path | None = None, skip_bad: bool = False, force: bool = False, binarize: bool = False,
            tile: int | None = None, console: Console | None = None) -> Path:
    """Prepare `card` into <data root>/<name>/ and return that folder. `inputs`: URLs, archives or folders (any
    order); without them the card's sources are downloaded (`source`: "convlora" or "official"; default: the
    Conv-LoRA archive where there is one). Bad pairs fail the prepare unless `skip_bad` excludes them."""
    console = console or Console()
    if card.source != "prepared":
        raise UserError(f"{card.name}: a {card.source} dataset; only cards with source = \"prepared\" are prepared")
    out = prepared_dir(card, data_root)
    if is_prepared(out) and not force:
        console.print(f"{card.name}: already prepared in {out} (--force to prepare again)")
        return out
    if tile and card.name != "road":
        raise UserError(f"--tile {tile}: only the road dataset (Massachusetts Roads' 1500 px tiles) is tiled")
    entries = _choose_sources(card, source)  # checked before anything of an earlier prepare is removed
    if not inputs:
        manual = [e for e in entries if e.get("manual") or not e.get("url")]
        if manual:
            console.print(_manual_steps(card, entries), soft_wrap=True)
            raise UserError(f"{card.name}: download the files above by hand, then pass them with --from")
        inputs = [e["url"] for e in entries]
    elif source is None:
        entries = card.sources  # given files: whichever layout they hold
    (out / "prepared.json").unlink(missing_ok=True)
    for stale in ("raw", "converted"):
        if force:
            shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    folders, record = _fetch(card, inputs, out, console)
    console.print(f"converting {card.name}")
    kind, splits, notes, bad = _convert(card, folders, entries, out, binarize, tile)
    missing_tests = _check_splits(card, splits)

    frames, problems = _screen(card, splits, bad, skip_bad, console)
    _check_splits(card, {s: list(zip(f["image"], f["label"])) for s, f in frames.items()})

    for old in out.glob("test*.csv"):
        old.unlink()
    for split, frame in frames.items():
        relative = frame.map(lambda p: os.path.relpath(p, out))
        write_csv_atomic(out / _csv_name(split), relative)
    try:
        version = metadata.version("peftbench")
    except metadata.PackageNotFoundError:
        version = "unknown"
    write_json_atomic(out / "prepared.json", {
        "dataset": card.name, "source": kind, "inputs": record, "layouts": notes,
        "split_seed": card.split_seed, "counts": {s: len(f) for s, f in frames.items()},
        "csv": {s: _csv_name(s) for s in frames}, "missing_test_sets": missing_tests,
        "excluded": [{**p.as_dict(), **{k: os.path.relpath(v, out) for k in ("image", "label") if (v := getattr(p, k))}}
                     for p in problems], "excluded_count": len(problems),
        "validation": "every image fully decoded; label size and values checked (peftbench.data.validate)",
        "options": {"binarize": binarize, "tile": tile, "skip_bad": skip_bad},
        "peftbench_version": version, "date": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    counts = ", ".join(f"{s} {len(f)}" for s, f in frames.items())
    console.print(f"{card.name}: prepared in {out} ({counts}" + (f"; {len(problems)} bad pairs excluded" if problems
                                                                  else "") + ")")
    return out
