"""Reader studies: clinicians read a fixed sample of a run's images, without and then with the model, one at a time.

A study is a seeded sample of a finished run's images, stratified by class (half positive, half negative, as far as
the run has them), every one with an out-of-fold prediction and, when the run stored heat maps, a heat map of the
positive class. Each image becomes a case with an opaque id (`case-007`, numbered in a random order): readers
never see a file name, path, image id or DICOM header, only the pixels, which are copied into the study's own
folder (`<runs>/studies/<study_id>/`) so that a study keeps working, and travels, without the data set.

Sessions: `unaided` (the image alone), `aided` (the model's probability and heat map shown before the call; only
for studies made with it, and only after the reader finished the unaided session: the same cases in a new order),
and `teaching` (after each call the truth, the model's answer and the heat map are revealed: for demonstrations,
stored apart and left out of every statistic). Each (reader, session, case) is read once: the store keeps the
first read, so merging the same file twice counts nothing twice.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from pathlib import Path

import numpy as np
import pandas as pd

from core import CxrError
from core.results.clinicians import study_report
from core.results.store import Store, now
from core.safety import refuse_in_demo_mode

SESSIONS = ("unaided", "aided", "teaching")
FILE_FORMAT = "cxr-transfer reader study"
MAX_FILE_BYTES = 200 * 1024 * 1024  # a study of 500 cases at 512 px is about 60 MB
MAX_CASES = 500
DISPLAY_PX = 512  # side of the stored case images: enough for a laptop screen, small enough to travel
CAM_PX = 128  # side of an imported heat map (a run stores them at gradcam_size; the overlay scales them to the image)
_CASE_ID = re.compile(r"^case-\d{3,4}$")


def study_dir(store: Store, study_id: str) -> Path:
    return store.runs_dir / "studies" / study_id


def create_study(store: Store, run_id: str, *, n_images: int, seed: int = 0, name: str = "", aided: bool = True,
                 threshold: float = 0.5) -> str:
    """Draw the sample, copy its pictures into the study's folder and store the study; returns the study id.

    Raises:
        CxrError: an unfinished run, too few images of a class, or a sample size out of range.
    """
    from PIL import Image

    from core.data.decode import DecodeError, decode_gray

    refuse_in_demo_mode("creating a reader study")
    run = store.run_record(run_id)
    if run.status != "finished":
        raise CxrError(f"run {run_id} is {run.status}; a reader study needs a finished run's out-of-fold predictions")
    if not 2 <= n_images <= MAX_CASES:
        raise CxrError(f"a study has 2 to {MAX_CASES} images; got {n_images}")
    preds = store.scored(run)
    cams = store.cams(run_id, target="positive")
    if not cams.empty:  # the aided session shows a heat map: draw from the images that have one
        preds = preds[preds["image_id"].isin(set(cams["image_id"]))]
    truth = preds["label_index"].to_numpy() == run.positive_index
    rng = np.random.default_rng(seed)
    n_pos = n_images // 2
    chosen = []
    for want, pool in ((n_pos, np.flatnonzero(truth)), (n_images - n_pos, np.flatnonzero(~truth))):
        if len(pool) < want:
            kind = run.positive_class if pool is not None and want == n_pos else run.negative_class
            raise CxrError(f"run {run_id} has {len(pool)} {kind} images with out-of-fold predictions"
                           + (" and heat maps" if not cams.empty else "") + f", fewer than the {want} asked for; choose fewer images")
        chosen.extend(rng.choice(pool, size=want, replace=False).tolist())
    rng.shuffle(chosen)  # case numbers say nothing about the class
    study_id = "study-" + time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
    folder = study_dir(store, study_id)
    folder.mkdir(parents=True, exist_ok=True)
    paths = store.image_files(run.dataset_id, list(preds.iloc[chosen]["image_id"])).set_index("image_id")["path"]
    maps = cams.set_index("image_id") if not cams.empty else None
    rows = []
    for k, i in enumerate(chosen, start=1):
        row = preds.iloc[i]
        case_id = f"case-{k:03d}"
        try:
            gray = decode_gray(paths[row.image_id], DISPLAY_PX)
        except (DecodeError, KeyError) as exc:
            raise CxrError(f"cannot read the image of {case_id}: {exc}; is the run's data set still where it was?") from None
        Image.fromarray(gray).save(folder / f"{case_id}.png")
        has_cam = maps is not None and row.image_id in maps.index
        if has_cam:
            with np.load(store.runs_dir / maps.loc[row.image_id, "artifact"]) as npz:
                Image.fromarray(npz["positive"][int(maps.loc[row.image_id, "slot"])]).save(folder / f"{case_id}_cam.png")
        rows.append({"case_id": case_id, "image_id": row.image_id, "truth": bool(truth[i]), "prob_positive": float(row.prob_positive),
                     "has_cam": bool(has_cam)})
    store.save_study({"study_id": study_id, "name": name.strip() or f"{run.name or run_id} · {n_images} images",
                      "run_id": run_id, "created_at": now(), "seed": int(seed), "n_images": int(n_images), "aided": bool(aided),
                      "threshold": float(threshold), "positive_class": run.positive_class, "negative_class": run.negative_class,
                      "origin": "created here"}, pd.DataFrame(rows))
    return study_id


def case_order(study_id: str, reader: str, session: str, case_ids: list[str]) -> list[str]:
    """The order in which a reader meets the cases in a session: fixed per (study, reader, session), so a page reload
    resumes where it was, and different between the unaided and the aided session."""
    digest = hashlib.sha256(f"{study_id}|{reader}|{session}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return [case_ids[i] for i in rng.permutation(len(case_ids))]


def clean_reader(reader: str) -> str:
    reader = " ".join(reader.split())
    if not reader:
        raise CxrError("name the reader first (a name or initials): reads are stored with who made them")
    if len(reader) > 80:
        raise CxrError("the reader's name is longer than 80 characters; use a name or initials")
    return reader


def session_state(store: Store, study_id: str, reader: str, session: str) -> dict:
    """Where a reader stands in a session: `order`, `done` (case ids read), `next` (case id or None), `blocked` (why the
    session cannot be read yet, or '')."""
    study = store.study(study_id)
    if session not in SESSIONS:
        raise CxrError(f"unknown session {session!r}; choose one of: {', '.join(SESSIONS)}")
    cases = store.study_cases(study_id)["case_id"].tolist()
    reads = store.reads(study_id)
    mine = reads[reads["reader"] == reader] if not reads.empty else reads
    done = set(mine.loc[mine["session"] == session, "case_id"]) if not mine.empty else set()
    blocked = ""
    if session == "aided":
        unaided = set(mine.loc[mine["session"] == "unaided", "case_id"]) if not mine.empty else set()
        if not study["aided"]:
            blocked = "this study has no aided session"
        elif len(unaided) < len(cases):
            blocked = f"the aided session opens when the unaided one is complete ({len(unaided)} of {len(cases)} read)"
    order = case_order(study_id, reader, session, cases)
    return {"order": order, "done": done, "next": next((c for c in order if c not in done), None), "blocked": blocked,
            "n_cases": len(cases)}


def record_read(store: Store, study_id: str, *, reader: str, session: str, case_id: str, call: int, confidence: int,
                seconds: float) -> bool:
    """Store one read after checking it; False when this reader already read this case in this session (kept as it was)."""
    refuse_in_demo_mode("reading")
    reader = clean_reader(reader)
    state = session_state(store, study_id, reader, session)
    if state["blocked"]:
        raise CxrError(state["blocked"])
    if case_id not in state["order"]:
        raise CxrError(f"{case_id!r} is not a case of study {study_id}")
    if call not in (0, 1) or not 0 <= confidence <= 100:
        raise CxrError("a read is a call (positive or negative) and a confidence from 0 to 100")
    row = pd.DataFrame([{"study_id": study_id, "reader": reader, "session": session, "case_id": case_id, "call": int(call),
                         "confidence": int(confidence), "seconds": float(max(0.0, seconds)), "read_at": now()}])
    return store.save_reads(row) == 1


def case_pictures(store: Store, study_id: str, case_id: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(grey image, heat map of the positive class or None) of one case, as uint8 arrays."""
    from PIL import Image

    folder = study_dir(store, study_id)
    if not _CASE_ID.match(case_id) or not (folder / f"{case_id}.png").is_file():
        raise CxrError(f"the picture of {case_id} is missing from {folder}; import the study file again")
    with Image.open(folder / f"{case_id}.png") as img:
        gray = np.asarray(img.convert("L"))
    cam_file = folder / f"{case_id}_cam.png"
    if not cam_file.is_file():
        return gray, None
    with Image.open(cam_file) as img:
        return gray, np.asarray(img.convert("L"))


def statistics(store: Store, study_id: str) -> dict:
    """The study's reader report (core.results.clinicians.study_report): per reader, pooled, aided against unaided."""
    return study_report(store, study_id)


# -- one file per study, to read on another machine and merge back ------------------------------------------------
def export_study(store: Store, study_id: str) -> bytes:
    """The study as one JSON file: its cases' pictures (PNG), truth and model output (for the aided and teaching
    sessions), and every read so far. No image id, path or header leaves: cases travel under their opaque ids."""
    study = store.study(study_id)
    folder = study_dir(store, study_id)
    cases = []
    for c in store.study_cases(study_id).itertuples():
        entry = {"case_id": c.case_id, "truth": bool(c.truth), "prob_positive": float(c.prob_positive),
                 "image_png": base64.b64encode((folder / f"{c.case_id}.png").read_bytes()).decode()}
        if c.has_cam and (folder / f"{c.case_id}_cam.png").is_file():
            entry["cam_png"] = base64.b64encode((folder / f"{c.case_id}_cam.png").read_bytes()).decode()
        cases.append(entry)
    reads = store.reads(study_id)
    keep = ("study_id", "name", "seed", "n_images", "aided", "threshold", "positive_class", "negative_class")
    payload = {"format": FILE_FORMAT, "version": 1, "study": {k: _plain(study[k]) for k in keep}, "cases": cases,
               "reads": [{k: _plain(v) for k, v in r.items() if k != "study_id"} for r in reads.to_dict("records")]}
    return json.dumps(payload).encode()


def import_study(store: Store, data: bytes) -> dict:
    """Create the study from its file if this store lacks it, then merge the file's reads; returns `study_id`,
    `created` (bool), `new_reads` and `already_there` (reads the store had: kept, not counted twice).

    Raises:
        CxrError: not a study file, too large, damaged pictures, or a study id here whose cases differ.
    """
    from PIL import Image

    from core.data.decode import DecodeError, decode_bytes

    refuse_in_demo_mode("importing a reader study")
    if len(data) > MAX_FILE_BYTES:
        raise CxrError(f"the file has {len(data) / 1e6:.0f} MB; a study file is at most {MAX_FILE_BYTES / 1e6:.0f} MB")
    try:
        payload = json.loads(data)
        if payload.get("format") != FILE_FORMAT:
            raise ValueError("format")
        study, cases, reads = payload["study"], payload["cases"], payload["reads"]
        study_id = str(study["study_id"])
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CxrError("not a cxr-transfer reader study file (export one from the Reader study page)") from None
    if not re.match(r"^study-[\w-]{1,60}$", study_id) or not 2 <= len(cases) <= MAX_CASES:
        raise CxrError("the study file is damaged (its id or its cases)")
    if any(not _CASE_ID.match(str(c.get("case_id", ""))) for c in cases):
        raise CxrError("the study file is damaged (a case id)")
    created = False
    if store.find_study(study_id) is None:
        folder = study_dir(store, study_id)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for c in cases:
            try:
                for key, suffix in (("image_png", ""), ("cam_png", "_cam")):
                    if key in c:
                        pixels = decode_bytes(base64.b64decode(c[key], validate=True), DISPLAY_PX if key == "image_png" else CAM_PX)
                        Image.fromarray(pixels).save(folder / f"{c['case_id']}{suffix}.png")
            except (DecodeError, ValueError, TypeError) as exc:
                raise CxrError(f"the picture of {c['case_id']} in the study file is damaged: {exc}") from None
            rows.append({"case_id": c["case_id"], "image_id": "", "truth": bool(c["truth"]), "prob_positive": float(c["prob_positive"]),
                         "has_cam": "cam_png" in c})
        store.save_study({"study_id": study_id, "name": str(study.get("name", study_id))[:200], "run_id": "", "created_at": now(),
                          "seed": int(study.get("seed", 0)), "n_images": len(cases), "aided": bool(study.get("aided", True)),
                          "threshold": float(study.get("threshold", 0.5)), "positive_class": str(study.get("positive_class", "positive")),
                          "negative_class": str(study.get("negative_class", "negative")), "origin": "imported"}, pd.DataFrame(rows))
        created = True
    else:
        mine = store.study_cases(study_id).set_index("case_id")["truth"].to_dict()
        theirs = {c["case_id"]: bool(c["truth"]) for c in cases}
        if mine != theirs:
            raise CxrError(f"study {study_id} here has other cases than the file's; it is not the same study")
    frame = pd.DataFrame(reads)
    if frame.empty:
        return {"study_id": study_id, "created": created, "new_reads": 0, "already_there": 0}
    try:
        frame = frame[["reader", "session", "case_id", "call", "confidence", "seconds", "read_at"]].copy()
        frame["reader"] = [clean_reader(str(r)) for r in frame["reader"]]
        frame["call"] = frame["call"].astype(int)
        frame["confidence"] = frame["confidence"].astype(int)
        frame["seconds"] = frame["seconds"].astype(float)
        frame["read_at"] = pd.to_datetime(frame["read_at"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CxrError(f"the study file's reads are damaged ({exc})") from None
    cases_here = set(store.study_cases(study_id)["case_id"])
    if (~frame["session"].isin(SESSIONS)).any() or (~frame["case_id"].isin(cases_here)).any() \
            or (~frame["call"].isin([0, 1])).any() or ((frame["confidence"] < 0) | (frame["confidence"] > 100)).any():
        raise CxrError("the study file's reads are damaged (a session, case, call or confidence out of range)")
    new = store.save_reads(frame.assign(study_id=study_id)[["study_id", "reader", "session", "case_id", "call", "confidence", "seconds",
                                                            "read_at"]])
    return {"study_id": study_id, "created": created, "new_reads": new, "already_there": len(frame) - new}


def _plain(value):
    """JSON-ready: numpy scalars and timestamps as Python values and ISO text."""
    if isinstance(value, (pd.Timestamp,)) or hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value


def report_markdown(stats: dict) -> str:
    """The reader report as Markdown (the CLI's `--format md`)."""
    s = stats["study"]
    lines = [f"# Reader study {s['name']} ({s['study_id']})", "",
             f"{s['n_images']} images; positive class: {s['positive_class']}; threshold of the model: {stats['threshold']}. "
             f"Teaching reads left out: {stats['teaching_reads_excluded']}.", "",
             "| reader | session | images read | sensitivity % (95% CI) | specificity % (95% CI) | AUC % (95% CI) | model AUC % on the same images | "
             "p reader vs model (DeLong) | p calls vs model (McNemar) | median s per image |", "|" + "---|" * 10]
    for r in stats["readers"]:
        m, mod, v = r["reader_metrics"], r["model_metrics"], r["vs_model"]
        lines.append(f"| {r['reader']} | {r['session']} | {r['n_read']} | {_ci(m, 'sensitivity')} | {_ci(m, 'specificity')} | "
                     f"{_ci(m, 'auc', 2)} | {_ci(mod, 'auc', 2)} | {_p(v.get('delong_p'))} | {_p(v.get('mcnemar_p'))} | "
                     f"{r['median_seconds']:.1f} |")
    if stats["aided_vs_unaided"]:
        lines += ["", "| reader | images read in both | AUC % aided | AUC % unaided | p (DeLong, paired) | p (McNemar) |", "|---|---|---|---|---|---|"]
        for c in stats["aided_vs_unaided"]:
            lines.append(f"| {c['reader']} | {c['n']} | {_pct(c.get('auc_a'), 2)} | {_pct(c.get('auc_b'), 2)} | {_p(c.get('delong_p'))} | "
                         f"{_p(c.get('mcnemar_p'))} |")
    for p in stats["pooled"]:
        lines += ["", f"Pooled, {p['session']} ({p['n_readers']} reader{'s' if p['n_readers'] != 1 else ''}): sensitivity {_ci(p['reader_metrics'], 'sensitivity')} %, "
                  f"specificity {_ci(p['reader_metrics'], 'specificity')} %, AUC {_ci(p['reader_metrics'], 'auc', 2)} %; the model on the "
                  f"same reads: AUC {_ci(p['model_metrics'], 'auc', 2)} %. {p['method']}"]
    return "\n".join(lines) + "\n"


def _pct(v, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _ci(m: dict, key: str, digits: int = 1) -> str:
    if m.get(key) is None:
        return "-"
    return f"{_pct(m[key], digits)} ({_pct(m.get(key + '_ci_low'), digits)}-{_pct(m.get(key + '_ci_high'), digits)})"


def _p(v) -> str:
    return "-" if v is None else ("<0.001" if v < 0.001 else f"{v:.3f}")


def report_html(stats: dict) -> str:
    """A self-contained HTML page of the reader report (the Markdown tables rendered plainly, escaped)."""
    import html as h

    body = []
    for line in report_markdown(stats).splitlines():
        if line.startswith("# "):
            body.append(f"<h1>{h.escape(line[2:])}</h1>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [h.escape(c.strip()) for c in line.strip("|").split("|")]
            tag = "th" if not body or not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{h.escape(line)}</p>")
    out, table = [], []
    for part in body:  # group consecutive rows into tables
        if part.startswith("<tr"):
            table.append(part)
            continue
        if table:
            out.append("<table>" + "".join(table) + "</table>")
            table = []
        out.append(part)
    if table:
        out.append("<table>" + "".join(table) + "</table>")
    style = "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto} table{border-collapse:collapse} td,th{border:1px solid #bbb;padding:4px 8px}"
    return f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Reader study</title><style>{style}</style></head><body>{''.join(out)}</body></html>\n"
