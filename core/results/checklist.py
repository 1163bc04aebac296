"""The reporting checklist that closes the HTML report: each CLAIM 2024 item, and TRIPOD+AI's where it asks for more,
pointing to the section of the report that answers it, or left to the authors where the tool cannot know.

CLAIM 2024: Tejani AS, Klontzas ME, Gatti AA, et al. Checklist for Artificial Intelligence in Medical Imaging
(CLAIM): 2024 Update. Radiol Artif Intell 2024;6(4):e240300 (44 items). TRIPOD+AI: Collins GS, Moons KGM,
Dhiman P, et al. BMJ 2024;385:e078378. Topics are named here in our own short words; read the guideline's own
text before submitting.

The rule: an item is "in this report" only where the report holds what the item asks for, computed by this tool
for these runs; "partly" says what is there and what is missing; everything the tool cannot know (the study's
aims, how the labels were made, ethics, funding, the data set's de-identification) is "for the authors". An
answer that depends on what was run (external validation, subgroups, repeats, heat maps) is decided from the
report's rows, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

IN_REPORT, PARTLY, AUTHORS, NOT_DONE = "in this report", "partly in this report", "for the authors", "not done in these runs"


@dataclass(frozen=True)
class Answer:
    guideline: str  # "CLAIM 2024" or "TRIPOD+AI"
    item: int
    topic: str
    status: str  # IN_REPORT | PARTLY | AUTHORS | NOT_DONE
    section: str  # the report section's anchor id ('' when none)
    note: str


# Sections of the HTML report (core/results/export.py gives each its id); the checklist links to them.
SECTIONS = {"results": "Results (Table 3 layout)", "operating-points": "Operating points", "repeats": "Repeated cross-validation",
            "subgroups": "Subgroups", "external": "External validation", "review": "Failure review and reader studies", "calibration": "Calibration", "figures": "Figures",
            "runs": "Folds, data and configuration"}

_AUTHORS_ONLY = {
    1: ("Identification as an AI study, with the category of technology", "Title and abstract of the manuscript."),
    2: ("Structured summary of design, methods, results and conclusions", "The manuscript's abstract."),
    3: ("Scientific and clinical background; intended use and role of the AI", "The tool cannot know the intended use."),
    4: ("Study aims, objectives and hypotheses", "The manuscript's introduction."),
    5: ("Prospective or retrospective study", "The runs use stored images (retrospective), but the study design is the authors'."),
    6: ("Study goal (model creation, feasibility, ...)", "The manuscript's methods."),
    11: ("De-identification", "The tool shows no patient identifiers and stores only bands and categories of subgroup variables; "
         "how the data set itself was de-identified is the authors' to state."),
    13: ("Image acquisition protocol", "Scanners, views and protocols of the source data set."),
    15: ("Rationale for the reference standard", "Why these labels are the reference standard."),
    16: ("Source of reference-standard annotations; qualifications of annotators", "Who made the labels (e.g. report NLP, radiologists)."),
    17: ("Annotation of the test set", "How the held-out images were labelled."),
    18: ("Inter- and intrarater variability of the annotations", "Not measured by the tool."),
    21: ("Intended sample size and how it was determined", "No sample-size calculation is made by the tool."),
    34: ("Clinical trial registration", "Where applicable."),
    40: ("Study limitations", "The manuscript's discussion."),
    41: ("Implications for practice, intended use and clinical role", "The decision curve (Calibration, Figures) helps, but the "
         "clinical role is the authors' to argue."),
    44: ("Sources of funding and role of funders", "The manuscript."),
}


def claim_answers(rows: list[dict]) -> list[Answer]:
    """Every CLAIM 2024 item (1-44) for report rows of `core.results.report.table3`, then TRIPOD+AI's additions."""
    has = {
        "flow": all(r.get("has_cohort_flow") for r in rows),
        "repeats": any("repeats_summary" in r for r in rows),
        "subgroups": any(r.get("subgroups") for r in rows),
        "external": any(r.get("external") for r in rows),
        "cams": any(r.get("config", {}).get("gradcam") for r in rows),
        "localised": any(r.get("pointing_game") is not None for r in rows),
        "grouped": all(r.get("leak_status") == "clean" for r in rows),
        "corrected": any(r.get("corrected_p_vs_first") is not None for r in rows),
        "reviewed": any(sum(r.get("review_tags", {}).values()) for r in rows),
    }
    a: dict[int, Answer] = {}

    def put(item: int, topic: str, status: str, section: str, note: str) -> None:
        a[item] = Answer("CLAIM 2024", item, topic, status, section, note)

    for item, (topic, note) in _AUTHORS_ONLY.items():
        put(item, topic, AUTHORS, "", note)
    put(7, "Data sources", PARTLY, "runs", "The data set's source type and location; the institution, release and dates are the authors'.")
    put(8, "Inclusion and exclusion criteria", IN_REPORT if has["flow"] else PARTLY, "runs",
        "Cohort selection steps with counts and reasons, and files excluded with why." if has["flow"] else
        "Files the tool excluded and why; the cohort's clinical eligibility criteria are the authors' (a cohort built with "
        "`python -m core cohort` carries its selection steps).")
    put(9, "Data preprocessing", IN_REPORT, "runs", "Configuration: decoding to grey, resizing to image_size, ImageNet "
        "normalisation and the augmentation settings.")
    put(10, "Selection of data subsets", PARTLY, "runs", "Cohort steps where the data set was built by the tool; any other "
        "selection is the authors'.")
    put(12, "Missing data and how it was handled", PARTLY, "runs", "Unreadable, undecodable or unlabelled files are excluded "
        "and counted with their reason; missing clinical variables are the authors'.")
    put(14, "Definition of the reference standard", PARTLY, "runs", "Configuration: the label column and which labels count as "
        "positive; how those labels were made is the authors'.")
    put(19, "How data were assigned to partitions", IN_REPORT, "runs", "Stratified k-fold cross-validation, seeded"
        + (", repeated on new splits" if has["repeats"] else "") + "; folds, seed and repeats in the configuration.")
    put(20, "Level at which partitions are disjoint", IN_REPORT, "runs",
        "Patient level: every patient's images in one fold, audited on the split actually used." if has["grouped"] else
        "The leakage audit of each run says whether patients were kept apart (a run without patient ids splits by image).")
    put(22, "Detailed description of the model", IN_REPORT, "runs", "Backbone, new classification head, weights; configuration.")
    put(23, "Software libraries, frameworks and packages", IN_REPORT, "runs", "torch and torchvision versions, device and code "
        "version under each run; cxr-transfer's version at the top.")
    put(24, "Initialisation of model parameters", IN_REPORT, "runs", "Weights actually loaded (ImageNet or from scratch) and the "
        "seed of the new head.")
    put(25, "Details of training", IN_REPORT, "runs", "Optimiser, learning rates, batch size, iterations, augmentation "
        "(configuration) and the training curves (Figures).")
    put(26, "Method of selecting the final model", IN_REPORT, "runs", "No selection: every fold trains for a fixed budget and "
        "its held-out images are never used to select or stop.")
    put(27, "Ensembling", IN_REPORT if has["external"] else AUTHORS, "external" if has["external"] else "",
        "External validation uses the mean probability of the fold models." if has["external"] else
        "Out-of-fold results come from single fold models (no ensemble); an ensemble used later is the authors' to describe.")
    put(28, "Metrics of model performance", IN_REPORT, "results", "Accuracy, sensitivity, specificity, pooled and per-fold AUC.")
    put(29, "Statistical measures of significance and uncertainty", IN_REPORT, "results", "Wilson and DeLong 95 % intervals, paired "
        "DeLong tests with Holm adjustment" + (", the corrected resampled t-test over repeats" if has["corrected"] else "") + ".")
    put(30, "Robustness or sensitivity analysis", IN_REPORT if has["repeats"] or has["subgroups"] else NOT_DONE,
        "repeats" if has["repeats"] else ("subgroups" if has["subgroups"] else ""),
        ("Repeated cross-validation: the spread of the result over new splits. " if has["repeats"] else "")
        + ("Results by subgroup." if has["subgroups"] else "") if has["repeats"] or has["subgroups"] else
        "Run with repeats > 1 to measure how much the split alone moves the result.")
    put(31, "Methods for explainability and how they were validated",
        (IN_REPORT if has["localised"] else PARTLY) if has["cams"] else NOT_DONE, "runs" if has["cams"] else "",
        ("Heat-map method and layer under the examples; validated against lesion masks by the pointing game and energy in "
         "the mask, each with its chance level (Table 3)." if has["localised"] else
         "Heat-map method and layer under the examples; the data set has no lesion masks, so their localisation is not validated here.")
        if has["cams"] else "Runs made with gradcam=false.")
    put(32, "Evaluation on internal data", IN_REPORT, "results", "Out-of-fold predictions of the cross-validation.")
    put(33, "Testing on external data", IN_REPORT if has["external"] else NOT_DONE, "external" if has["external"] else "",
        "Each external data set's results beside the internal ones, with the unpaired DeLong test." if has["external"] else
        "No external validation: `python -m core validate RUN_ID --data PATH`.")
    put(35, "Numbers of patients or examinations included and excluded", IN_REPORT, "runs", "Images and patients per class; "
        "excluded files with their reason.")
    put(36, "Demographic and clinical characteristics in each partition", PARTLY if has["subgroups"] else AUTHORS,
        "subgroups" if has["subgroups"] else "", "Counts and results by subgroup over the whole data set, not per fold."
        if has["subgroups"] else "The data set has no subgroup variables the tool could read.")
    put(37, "Performance metrics with statistical uncertainty", IN_REPORT, "results", "Every figure of Table 3 with its interval.")
    put(38, "Estimates of diagnostic performance and their precision", IN_REPORT, "operating-points",
        "Sensitivity, specificity, PPV and NPV with intervals at each operating point; calibration and Brier score.")
    if has["reviewed"]:
        put(39, "Failure analysis of incorrect results", IN_REPORT, "review", "Reviewers' tags of the misses (label error, subtle "
            "finding, support device, ...) counted per tag" + (", with heat maps of misses among the examples." if has["cams"] else "."))
    else:
        put(39, "Failure analysis of incorrect results", PARTLY if has["cams"] else AUTHORS, "runs" if has["cams"] else "",
            "Heat maps of false negatives and false positives among the examples; tag the misses on the Review page to count "
            "what they are." if has["cams"] else "No heat maps stored; tag the misses on the Review page to count what they are.")
    put(42, "Reference to the full study protocol or technical details", PARTLY, "runs", "Each run's full configuration and run "
        "id reproduce it with this tool; a protocol document is the authors'.")
    put(43, "Availability of software, trained model and data", PARTLY, "runs", "Software name and versions are given; where "
        "the code, fold models (save_models) and data are shared is the authors' to state.")
    answers = [a[k] for k in sorted(a)]
    assert [x.item for x in answers] == list(range(1, 45)), "every CLAIM 2024 item exactly once"
    answers += [
        Answer("TRIPOD+AI", 14, "Approaches to model fairness and their rationale", PARTLY if has["subgroups"] else AUTHORS,
               "subgroups" if has["subgroups"] else "", "Results by subgroup, each tested against the rest; no fairness "
               "intervention is made by the tool." if has["subgroups"] else "No subgroup variables in the data set."),
        Answer("TRIPOD+AI", 15, "Model output and the rationale for any threshold", IN_REPORT, "operating-points",
               "Probabilities of the positive class; thresholds with the rule that chose them and the data they were chosen on."),
    ]
    return answers


def checklist_html(rows: list[dict], escape) -> str:
    """The checklist as an HTML section; `escape` is the report's HTML escaper."""
    counts = {s: 0 for s in (IN_REPORT, PARTLY, NOT_DONE, AUTHORS)}
    body = []
    for x in claim_answers(rows):
        counts[x.status] += 1
        where = f"<a href='#{x.section}'>{escape(SECTIONS[x.section])}</a>" if x.section else ""
        body.append(f"<tr><td>{escape(x.guideline)}</td><td>{x.item}</td><td>{escape(x.topic)}</td><td>{escape(x.status)}</td>"
                    f"<td>{where}</td><td>{escape(x.note)}</td></tr>")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return ("<h2 id='checklist'>Reporting checklist (CLAIM 2024, and TRIPOD+AI where it asks for more)</h2>"
            f"<p class='muted'>{escape(summary)}. An item is marked as in this report only where this report holds what it "
            "asks for; topics are named in short, so read each guideline's own wording (CLAIM: Tejani et al., Radiol Artif Intell "
            "2024;6(4):e240300; TRIPOD+AI: Collins et al., BMJ 2024;385:e078378).</p>"
            "<div class=wide><table><tr><th>guideline</th><th>item</th><th>topic</th><th>status</th><th>where</th><th>note</th></tr>"
            + "".join(body) + "</table></div>")
