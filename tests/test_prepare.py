"""`peftbench prepare`: every dataset from a tiny copy of its official release and of its Conv-LoRA archive, downloads
from a local HTTP server (checksums, resume after a dropped connection), hostile archives, bad pairs."""

import dataclasses
import io
import json
import os
import tarfile
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import prepare_fixtures as fx
import pytest
from PIL import Image
from rich.console import Console

from peftbench.cli import main
from peftbench.data import dataset_cards, resolve_dataset
from peftbench.data.cards import is_prepared
from peftbench.data.files import read_manifest
from peftbench.data.layouts import trans10k_v2_index, voc_palette
from peftbench.data.prepare import prepare, safe_extract
from peftbench.data.validate import validate_pairs
from peftbench.errors import UserError
from peftbench.store.hashing import file_sha256

CARDS = dataset_cards()


def run_prepare(card, inputs, root, **kw):
    """prepare() with its console captured; returns (prepared folder, console text)."""
    buf = io.StringIO()
    try:
        out = prepare(card, [str(p) for p in inputs] if inputs else None, data_root=root,
                      console=Console(file=buf, width=300), **kw)
    except UserError as err:
        err.console = buf.getvalue()
        raise
    return out, buf.getvalue()


def prepared_json(folder: Path) -> dict:
    return json.loads((folder / "prepared.json").read_text())


def label_values(frame: pd.DataFrame) -> set[int]:
    return set().union(*(np.unique(np.asarray(Image.open(p).convert("L"))).tolist() for p in frame["label"]))


# ---------------------------------------------------------------------------------------------- both layouts


@pytest.mark.parametrize("name", sorted(fx.OFFICIAL))
def test_every_official_release_prepares_to_the_conv_lora_layout(name, tmp_path):
    card = CARDS[name]
    inputs, counts = fx.build("official", name, tmp_path / "src")
    out, _ = run_prepare(card, inputs, tmp_path / "data")
    record = prepared_json(out)
    assert record["counts"] == counts and record["source"] == "official" and record["excluded_count"] == 0
    expected_csvs = {"train.csv", "val.csv"} | ({f"test_{t}.csv" for t in card.test_sets} or {"test.csv"})
    assert {p.name for p in out.glob("*.csv")} == expected_csvs
    assert all(not os.path.isabs(p) for p in pd.read_csv(out / "train.csv")["image"])
    splits = read_manifest(out)
    assert {k: len(v) for k, v in splits.items()} == counts
    images = [set(f["image"]) for f in splits.values()]
    assert sum(map(len, images)) == len(set().union(*images))  # no image in two splits
    labels = pd.concat(splits.values())
    if card.kind == "binary":
        assert label_values(labels) == {0, 255}
    else:
        expected = fx.class_stripes(card.num_classes)
        for path in labels["label"]:
            assert (np.asarray(Image.open(path)) == expected).all(), path


@pytest.mark.parametrize("name", sorted(fx.CONVLORA))
def test_every_conv_lora_archive_prepares(name, tmp_path):
    inputs, counts = fx.build("convlora", name, tmp_path / "src")
    out, _ = run_prepare(CARDS[name], inputs, tmp_path / "data")
    record = prepared_json(out)
    assert record["source"] == "convlora" and record["counts"] == counts
    assert {k: len(v) for k, v in read_manifest(out).items()} == counts
    assert record["missing_test_sets"] == (["cod10k", "chameleon"] if name == "cod" else [])
    assert record["inputs"][0]["sha256"] == file_sha256(inputs[0])


def test_sinet_packaging_given_as_a_folder(tmp_path):
    inputs, counts = fx.sinet_cod(tmp_path / "src")
    out, _ = run_prepare(CARDS["cod"], inputs, tmp_path / "data")
    assert prepared_json(out)["counts"] == counts
    assert (out / "raw" / "other" / "SINet_data").is_symlink()  # linked, not copied


def test_kvasir_jpeg_masks_are_binarised_and_cvc_tifs_become_png(tmp_path):
    inputs, _ = fx.build("official", "polyp", tmp_path / "src")
    out, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "data")
    frame = pd.concat(read_manifest(out).values())
    kvasir = frame[frame["image"].str.contains("cju")]
    assert all(p.endswith(".png") and "converted/kvasir_seg" in p for p in kvasir["label"])
    assert all(p.endswith(".png") for p in frame["image"] if "cvc" in p)
    # the JPEG mask noise is gone; the rectangle is where it was drawn
    assert (np.asarray(Image.open(kvasir["label"].iloc[0])) == fx.binary_mask()).mean() > 0.99


def test_carved_splits_are_seeded_and_recorded(tmp_path):
    inputs, _ = fx.build("official", "polyp", tmp_path / "src")
    first, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "a")
    again, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "b")
    other, _ = run_prepare(dataclasses.replace(CARDS["polyp"], split_seed=3), inputs, tmp_path / "c")
    assert (first / "val.csv").read_text() == (again / "val.csv").read_text()
    assert (first / "val.csv").read_text() != (other / "val.csv").read_text()
    carved = prepared_json(first)["layouts"]["kvasir_seg"]["carved"]
    assert carved["kvasir_seg"]["val"] == 2 and carved["kvasir_seg test"]["test"] == 1
    assert "0.2 of train" in carved["kvasir_seg"]["recipe"] and prepared_json(other)["split_seed"] == 3


def test_road_tiles_are_kept_whole_with_no_data_recorded_or_cut_with_tile(tmp_path):
    inputs, _ = fx.build("official", "road", tmp_path / "src")
    whole, _ = run_prepare(CARDS["road"], inputs, tmp_path / "whole")
    notes = prepared_json(whole)["layouts"]["road"]
    assert notes["tile_sizes"] == {"(40, 40)": 11}
    assert notes["mostly_nodata_tiles"]["tiles"] == {"train": [{"image": "train_000.tiff", "nodata_fraction": 0.75}]}
    tiled, _ = run_prepare(CARDS["road"], inputs, tmp_path / "tiled", tile=20)
    record = prepared_json(tiled)
    # 4 crops per 40 px tile; the bottom two crops of train_000 are all no-data and skipped
    assert record["counts"] == {"train": 5 * 4 - 2, "val": 12, "test": 12}
    assert record["layouts"]["road"]["tiling"]["train"]["all_nodata_skipped"] == 2
    assert Image.open(read_manifest(tiled)["test"]["image"][0]).size == (20, 20)


def test_trans10k_v2_index_reads_palette_indices_and_inverts_colour_masks():
    stripes = fx.class_stripes(12)
    index, bad = trans10k_v2_index(Image.fromarray(stripes, "L"))
    assert (index == stripes).all() and bad == []
    colour = np.array(voc_palette(12), np.uint8)[stripes]
    index, bad = trans10k_v2_index(Image.fromarray(colour))
    assert (index == stripes).all() and bad == []
    colour[0, 0] = (1, 2, 3)
    assert trans10k_v2_index(Image.fromarray(colour))[1] == [[1, 2, 3]]
    assert trans10k_v2_index(Image.fromarray(np.full((4, 4), 13, np.uint8), "L"))[1] == [13]


def test_trans10k_v1_unknown_colours_are_bad_pairs(tmp_path):
    inputs, _ = fx.build("official", "trans10k_v1", tmp_path / "src")
    with zipfile.ZipFile(inputs[0], "a") as zf:  # a blue pixel is no Trans10K-v1 class
        buf = io.BytesIO()
        mask = np.array(fx.TRANS10K_V1_COLOURS, np.uint8)[fx.class_stripes(3)]
        mask[0, 0] = (0, 0, 200)  # channel mean 66.7: neither 0, 85 nor 255
        Image.fromarray(mask).save(buf, "PNG")
        zf.writestr("train/masks/blue_mask.png", buf.getvalue())
        jpg = io.BytesIO()
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(jpg, "JPEG")
        zf.writestr("train/images/blue.jpg", jpg.getvalue())
    with pytest.raises(UserError, match="1 bad"):
        run_prepare(CARDS["trans10k_v1"], inputs, tmp_path / "data")
    out, _ = run_prepare(CARDS["trans10k_v1"], inputs, tmp_path / "data", skip_bad=True)
    assert "outside the class mapping" in prepared_json(out)["excluded"][0]["problem"]


# ---------------------------------------------------------------------------------------------- bad pairs


def _sbu_with_bad_pairs(work: Path) -> list[Path]:
    """The tiny SBU release plus a truncated PNG, a mask of the wrong size and an anti-aliased mask."""
    fx.build("official", "sbu", work)
    train = work / "official_sbu" / "src" / "sbu" / "SBU-shadow" / "SBUTrain4KRecoveredSmall"
    png = fx.write_image(train / "ShadowImages" / "truncated.png")
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    fx.write_mask(train / "ShadowMasks" / "truncated.png")
    fx.write_image(train / "ShadowImages" / "small_mask.jpg")
    fx.write_mask(train / "ShadowMasks" / "small_mask.png", fx.binary_mask((16, 12)))
    fx.write_image(train / "ShadowImages" / "blurred.jpg")
    blurred = fx.binary_mask()
    blurred[:, 8] = 128  # an anti-aliased edge
    fx.write_mask(train / "ShadowMasks" / "blurred.png", blurred)
    return [fx.zip_folder(train.parent, work / "bad" / "SBU-shadow.zip")]


def test_bad_pairs_are_reported_by_name_then_excluded_with_skip_bad(tmp_path):
    inputs = _sbu_with_bad_pairs(tmp_path / "src")
    with pytest.raises(UserError, match="3 bad image/label pairs") as err:
        run_prepare(CARDS["sbu"], inputs, tmp_path / "data")
    text = err.value.console
    assert "truncated.png" in text and "small_mask.jpg" in text and "blurred.png" in text
    assert "label size (16, 12) != image size (32, 24)" in text and "anti-aliased" in text
    assert not is_prepared(tmp_path / "data" / "sbu")
    out, _ = run_prepare(CARDS["sbu"], inputs, tmp_path / "data", skip_bad=True)
    record = prepared_json(out)
    assert record["excluded_count"] == 3 and sum(record["counts"].values()) == 14
    assert {Path(e["image"]).stem for e in record["excluded"]} == {"truncated", "small_mask", "blurred"}
    assert all(not os.path.isabs(e["image"]) and (out / e["image"]).is_file() for e in record["excluded"])
    assert len(resolve_dataset("sbu", tmp_path / "data").excluded) == 3  # counted in every run's record
    out, _ = run_prepare(CARDS["sbu"], inputs, tmp_path / "binarized", skip_bad=True, binarize=True)
    assert prepared_json(out)["excluded_count"] == 2  # --binarize repairs the anti-aliased mask


def test_validate_pairs_fast_mode_finds_truncation_by_end_marker(tmp_path):
    good, cut = fx.write_image(tmp_path / "good.jpg"), fx.write_image(tmp_path / "cut.jpg")
    cut.write_bytes(cut.read_bytes()[:-40])
    mask = fx.write_mask(tmp_path / "m.png")
    frame = pd.DataFrame({"image": [str(good), str(cut)], "label": [str(mask)] * 2})
    for full in (False, True):
        problems = validate_pairs(frame, "binary", 1, "train", full_decode=full)
        assert [Path(p.image).name for p in problems] == ["cut.jpg"]
    multi = fx.write_mask(tmp_path / "multi.png", np.array([[0, 2, 255, 7]], np.uint8).repeat(24, 0).repeat(8, 1))
    frame = pd.DataFrame({"image": [str(good)], "label": [str(multi)]})
    assert validate_pairs(frame, "multiclass", 8, "val") == []
    assert "[7] >= num_classes 7" in validate_pairs(frame, "multiclass", 7, "val")[0].problem


# ---------------------------------------------------------------------------------------------- downloads


class _Handler(SimpleHTTPRequestHandler):
    """Files from `directory`, with Range support; the first GET of a path in `drop` stops half way."""

    def __init__(self, *args, state, **kwargs):
        self.state = state
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        self.state["requests"].append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if self.path in self.state["drop"]:
            self.state["drop"].remove(self.path)
            self.wfile.write(data[start: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data[start:])


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder, state with the requests seen and the paths to drop half way)."""
    served = tmp_path / "served"
    served.mkdir()
    state = {"requests": [], "drop": set()}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(served), state=state))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", served, state
    httpd.shutdown()


def _served_convlora(served: Path, tmp_path: Path) -> Path:
    (archive,), _ = fx.convlora_archive("sbu", tmp_path / "src")
    return Path(os.replace(archive, served / archive.name) or served / archive.name)


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    base, served, state = server
    archive = _served_convlora(served, tmp_path)
    state["drop"].add("/SBU-shadow.zip")
    out, text = run_prepare(CARDS["sbu"], [f"{base}/SBU-shadow.zip"], tmp_path / "data")
    half = archive.stat().st_size // 2
    assert state["requests"] == [("/SBU-shadow.zip", None), ("/SBU-shadow.zip", f"bytes={half}-")]
    assert "resuming" in text and prepared_json(out)["counts"]["train"] == 5
    # two card entries are called SBU-shadow.zip and neither has this URL: no entry (nothing to verify against)
    assert file_sha256(out / "downloads" / "other" / "SBU-shadow.zip") == file_sha256(archive)


def test_card_download_verifies_checksum_and_size(server, tmp_path):
    base, served, _ = server
    archive = _served_convlora(served, tmp_path)
    sha, size = file_sha256(archive), archive.stat().st_size
    entry = {"name": "convlora", "layout": "convlora", "url": f"{base}/SBU-shadow.zip"}
    card = dataclasses.replace(CARDS["sbu"], sources=[{**entry, "sha256": "0" * 64, "size": size}])
    with pytest.raises(UserError, match=f"sha256 {sha}, the card expects {'0' * 64}"):
        run_prepare(card, None, tmp_path / "data")
    card = dataclasses.replace(CARDS["sbu"], sources=[{**entry, "size": size + 1}])
    with pytest.raises(UserError, match=f"size {size} bytes, the card expects {size + 1}"):
        run_prepare(card, None, tmp_path / "data")
    card = dataclasses.replace(CARDS["sbu"], sources=[entry])  # no checksum yet: printed to paste into the card
    out, text = run_prepare(card, None, tmp_path / "data")
    assert f'sha256 = "{sha}"  size = {size}' in text and is_prepared(out)
    card = dataclasses.replace(CARDS["sbu"], sources=[{**entry, "url": f"{base}/missing.zip"}])
    with pytest.raises(UserError, match="HTTP 404"):
        run_prepare(card, None, tmp_path / "other")


def test_hostile_archive_from_the_server_is_refused(server, tmp_path):
    base, served, _ = server
    with zipfile.ZipFile(served / "evil.zip", "w") as zf:
        zf.writestr("SBU-shadow/train.csv", "image,label\n")
        zf.writestr("../evil.txt", "x")
    with pytest.raises(UserError, match="'../evil.txt' would be written outside"):
        run_prepare(CARDS["sbu"], [f"{base}/evil.zip"], tmp_path / "data")
    assert not (tmp_path / "data" / "sbu" / "raw" / "evil.txt").exists()
    assert not list((tmp_path / "data" / "sbu" / "raw").rglob("evil.txt"))


def _zip_symlink(path: Path, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, target)


def _tar_member(path: Path, name: str, link: str | None = None) -> None:
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo(name)
        if link is None:
            tf.addfile(info, io.BytesIO(b""))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            tf.addfile(info)


@pytest.mark.parametrize("make", [
    lambda p: zipfile.ZipFile(p, "w").writestr("/abs/evil.txt", "x"),
    lambda p: _zip_symlink(p, "data/link", "../../outside"),
    lambda p: _tar_member(p, "../evil.txt"),
    lambda p: _tar_member(p, "/abs/evil.txt"),
    lambda p: _tar_member(p, "data/link", "/etc"),
    lambda p: _tar_member(p, "data/link", "../../outside"),
], ids=["zip-absolute", "zip-symlink", "tar-dotdot", "tar-absolute", "tar-symlink-absolute", "tar-symlink-dotdot"])
def test_safe_extract_refuses_paths_and_links_leaving_the_target(make, tmp_path):
    archive = tmp_path / "evil.archive"
    make(archive)
    with pytest.raises(UserError, match="outside the extraction folder"):
        safe_extract(archive, tmp_path / "raw")
    assert not (tmp_path / "raw" / "evil").exists() and not (tmp_path / "raw" / "evil.partial").exists()


def test_symlink_inside_the_archive_is_kept(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/a.txt", "a")
        info = zipfile.ZipInfo("data/b.txt")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "a.txt")
    target = safe_extract(archive, tmp_path / "raw")
    assert (target / "data" / "b.txt").read_text() == "a" and not (target / "data" / "b.txt").is_symlink()


def test_chained_zip_links_cannot_lead_outside(tmp_path):
    """Each link passes the path check alone (l2 -> ., l1 -> l2/..), chained they would reach the parent."""
    archive = tmp_path / "chain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, target in (("l2", "."), ("l1", "l2/..")):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o120777 << 16
            zf.writestr(info, target)
        zf.writestr("l1/escaped.txt", "x")
    with pytest.raises(UserError, match="does not name a file of the archive"):
        safe_extract(archive, tmp_path / "raw" / "slot")
    assert not list(tmp_path.rglob("escaped.txt"))


# ---------------------------------------------------------------------------------------------- command line


def test_manual_sources_print_the_exact_steps(tmp_path):
    with pytest.raises(UserError, match="download the files above by hand") as err:
        run_prepare(CARDS["cod"], None, tmp_path, source="official")
    assert "peftbench prepare cod --from COD10K-v3.zip --from CAMO-V.1.0-CVPR19.zip" in err.value.console
    assert "https://github.com/DengPingFan/SINet" in err.value.console
    with pytest.raises(UserError, match="no Conv-LoRA archive"):
        run_prepare(CARDS["trans10k_v2"], None, tmp_path, source="convlora")


def test_cli_prepare_then_datasets_and_run_resolution(tmp_path, capsys):
    (archive,), _ = fx.build("official", "sbu", tmp_path / "src")
    root = tmp_path / "data"
    assert main(["prepare", "sbu", "--from", str(archive), "--data-root", str(root)]) == 0
    assert main(["prepare", "sbu", "--from", str(archive), "--data-root", str(root)]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert resolve_dataset("sbu", root).path == str(root / "sbu")
    assert main(["prepare", "synth_road"]) == 2 and "not a registered real dataset" in capsys.readouterr().err
    assert main(["prepare", "sbu", "--from", str(tmp_path / "nope.zip"), "--data-root", str(root), "--force"]) == 2
    assert "--from" in capsys.readouterr().err and not is_prepared(root / "sbu")


def test_interrupted_prepare_is_redone_reusing_the_extraction(tmp_path):
    (archive,), counts = fx.build("official", "sbu", tmp_path / "src")
    out, _ = run_prepare(CARDS["sbu"], [archive], tmp_path / "data")
    (out / "prepared.json").unlink()  # as if killed before the last step
    extracted = next((out / "raw" / "other").iterdir())
    stamp = extracted.stat().st_mtime_ns
    out, _ = run_prepare(CARDS["sbu"], [archive], tmp_path / "data")
    assert prepared_json(out)["counts"] == counts and extracted.stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("layout, name", [("official", n) for n in sorted(fx.OFFICIAL)]
                         + [("convlora", n) for n in sorted(fx.CONVLORA)])
def test_one_training_step_on_each_prepared_dataset(layout, name, tmp_path):
    from peftbench.grid.runner import GridOptions, resolve_config
    from peftbench.methods import method_specs
    from peftbench.training.train import train_run

    inputs, _ = fx.build(layout, name, tmp_path / "src")
    out, _ = run_prepare(CARDS[name], inputs, tmp_path / "data")
    card = resolve_dataset(name, tmp_path / "data")
    assert card.path == str(out)
    spec = method_specs()["lora"]
    config = resolve_config(spec, card, 0, GridOptions(sam="tiny_random", device="cpu", epochs=1, batch_size=4))
    result = train_run(config, card, spec)
    tests = set(result["metrics"])
    missing = {"cod10k", "chameleon"} if (layout, name) == ("convlora", "cod") else set()  # the archive has CAMO only
    assert tests == set(card.test_names) - missing, result["metrics"].keys()
    assert all(set(values) >= set(card.metrics) for values in result["metrics"].values())
    for metrics in result["metrics"].values():
        assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))


def test_shared_file_name_is_matched_to_the_entry_with_its_checksum(tmp_path):
    (archive,), _ = fx.build("official", "sbu", tmp_path / "src")  # SBU-shadow.zip, as the Conv-LoRA archive
    sha, size = file_sha256(archive), archive.stat().st_size
    card = dataclasses.replace(CARDS["sbu"], sources=[
        {**CARDS["sbu"].sources[0], "sha256": "f" * 64}, {**CARDS["sbu"].sources[1], "sha256": sha, "size": size}])
    out, text = run_prepare(card, [archive], tmp_path / "data")
    record = prepared_json(out)["inputs"][0]
    assert record["source"] == "sbu_shadow" and record["checksum_in_card"] and "no checksum" not in text
    assert card.sources[0]["name"] == "convlora" and (out / "raw" / "sbu_shadow").is_dir()


def test_force_keeps_a_good_dataset_when_the_new_sources_need_a_manual_step(tmp_path):
    inputs, _ = fx.build("official", "leaf", tmp_path / "src")
    out, _ = run_prepare(CARDS["leaf"], inputs, tmp_path / "data")
    with pytest.raises(UserError, match="download the files above by hand"):
        prepare(CARDS["leaf"], source="official", data_root=tmp_path / "data", force=True, console=Console(quiet=True))
    assert is_prepared(out)
    with pytest.raises(UserError, match="--tile 500: only the road dataset"):
        prepare(CARDS["leaf"], inputs, data_root=tmp_path / "data", force=True, tile=500, console=Console(quiet=True))


# ---------------------------------------------------------------------------------------------- real-world defects


def _polyp_release(work: Path, damage) -> list[Path]:
    """The official polyp archives (Kvasir-SEG's JPEG masks and CVC-ClinicDB's TIFs: both converted) after
    `damage(kvasir_folder, cvc_folder)`."""
    fx.polyp(work)
    kvasir, cvc = work / "src" / "kvasir" / "Kvasir-SEG", work / "src" / "cvc" / "CVC-ClinicDB"
    damage(kvasir, cvc)
    return [fx.zip_folder(kvasir, work / "damaged" / "kvasir-seg.zip"), fx.zip_folder(cvc, work / "damaged" / "cvc.zip")]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("member", ["masks/cju000.jpg", "cvc:Original/2.tif"])
def test_a_truncated_file_that_must_be_converted_is_a_bad_pair_not_a_traceback(member, tmp_path):
    folder, name = ("cvc", member[4:]) if member.startswith("cvc:") else ("kvasir", member)
    inputs = _polyp_release(tmp_path, lambda kvasir, cvc: _truncate((cvc if folder == "cvc" else kvasir) / name))
    with pytest.raises(UserError, match="1 bad image/label pairs") as err:
        run_prepare(CARDS["polyp"], inputs, tmp_path / "data")
    assert Path(name).name in err.value.console and "unreadable or corrupt" in err.value.console
    out, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "data", skip_bad=True)
    record = prepared_json(out)
    assert record["excluded_count"] == 1 and Path(name).name in json.dumps(record["excluded"])
    assert sum(record["counts"].values()) == 16 - 1
    assert len(resolve_dataset("polyp", tmp_path / "data").excluded) == 1  # counted in every run's record


def test_an_image_without_a_mask_is_a_bad_pair(tmp_path):
    inputs = _polyp_release(tmp_path, lambda kvasir, cvc: (kvasir / "masks" / "cju003.jpg").unlink())
    with pytest.raises(UserError, match="1 bad image/label pairs") as err:
        run_prepare(CARDS["polyp"], inputs, tmp_path / "data")
    assert "cju003.jpg" in err.value.console and "image without a mask" in err.value.console
    out, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "data", skip_bad=True)
    assert prepared_json(out)["excluded"][0]["problem"].startswith("image without a mask")


def test_a_tif_pillow_cannot_open_is_read_with_tifffile(tmp_path):
    import tifffile
    from PIL import UnidentifiedImageError

    def odd_tif(kvasir, cvc):  # PhotometricInterpretation 1 (min-is-black) with 3 samples per pixel
        pixels = np.asarray(Image.open(cvc / "Original" / "1.tif").convert("RGB"))
        tifffile.imwrite(cvc / "Original" / "1.tif", pixels, photometric="minisblack", planarconfig="contig")

    inputs = _polyp_release(tmp_path, odd_tif)
    odd = tmp_path / "src" / "cvc" / "CVC-ClinicDB" / "Original" / "1.tif"
    with pytest.raises((UnidentifiedImageError, OSError, ValueError)):
        Image.open(odd).load()  # the file really is one Pillow refuses
    out, _ = run_prepare(CARDS["polyp"], inputs, tmp_path / "data")
    assert prepared_json(out)["excluded_count"] == 0
    png = next(p for p in pd.concat(read_manifest(out).values())["image"] if p.endswith("/1.png"))
    assert Image.open(png).size == (fx.W, fx.H)


def test_a_renamed_archive_is_recognised_by_its_content(tmp_path):
    inputs, _ = fx.build("official", "polyp", tmp_path / "src")
    renamed = [p.rename(p.with_name(f"my-download-{i}.zip")) for i, p in enumerate(inputs)]
    out, _ = run_prepare(CARDS["polyp"], renamed, tmp_path / "data")
    sources = {r["file"]: r["source"] for r in prepared_json(out)["inputs"]}
    assert sorted(sources.values()) == sorted(e["name"] for e in CARDS["polyp"].sources
                                              if e.get("layout") in ("kvasir_seg", "cvc_clinicdb"))
