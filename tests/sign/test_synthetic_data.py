"""The synthetic dataset is deterministic, labelled, and split by signer."""

from __future__ import annotations

import pandas as pd
import pytest

from panformer.engine.errors import UserError
from panformer.sign.data import read_label_file, signer_split
from panformer.sign.synthetic import SyntheticSpec, build_synthetic, dataset_digest

SMALL = SyntheticSpec(signs=4, signers=3, repetitions=1, seed=0)


def test_same_spec_same_bytes_other_seed_other_data(tmp_path):
    build_synthetic(tmp_path / "a", SMALL)
    build_synthetic(tmp_path / "b", SMALL)
    build_synthetic(tmp_path / "c", SyntheticSpec(signs=4, signers=3, repetitions=1, seed=1))
    assert dataset_digest(tmp_path / "a") == dataset_digest(tmp_path / "b")
    assert dataset_digest(tmp_path / "a") != dataset_digest(tmp_path / "c")


def test_label_file_lists_every_sign_for_every_signer(tmp_path):
    labels = pd.read_csv(build_synthetic(tmp_path, SMALL))
    assert list(labels.columns) == ["path", "label", "signer"]
    assert labels.groupby("signer")["label"].nunique().eq(4).all()
    assert all(label.startswith("synthetic-") for label in labels["label"])  # never mistaken for real signs


def test_signer_split_is_disjoint_and_complete(tmp_path):
    items = read_label_file(build_synthetic(tmp_path, SyntheticSpec(signs=2, signers=10, repetitions=1)))
    groups = signer_split(items, val_fraction=0.2, test_fraction=0.2, seed=0)
    signers = {split: {i.signer for i in group} for split, group in groups.items()}
    assert len(signers["val"]) == 2 and len(signers["test"]) == 2 and len(signers["train"]) == 6
    assert not (signers["train"] & signers["val"]) and not (signers["train"] & signers["test"])
    assert sum(len(g) for g in groups.values()) == len(items)


def test_label_file_naming_missing_files_is_a_user_error(tmp_path):
    labels = build_synthetic(tmp_path, SMALL)
    table = pd.read_csv(labels)
    table.loc[0, "path"] = "nowhere/gone.parquet"
    table.to_csv(labels, index=False)
    with pytest.raises(UserError, match="1 listed files do not exist"):
        read_label_file(labels)


def test_asl_signs_columns_are_understood(tmp_path):
    build_synthetic(tmp_path, SMALL)
    table = pd.read_csv(tmp_path / "labels.csv")
    asl = pd.DataFrame({"path": table["path"], "participant_id": table["signer"], "sequence_id": range(len(table)),
                        "sign": table["label"]})
    asl.to_csv(tmp_path / "train.csv", index=False)
    items = read_label_file(tmp_path / "train.csv")
    assert [i.label for i in items] == table["label"].tolist() and items[0].signer == table["signer"][0]


def test_an_asl_signs_folder_loads_with_signer_independent_splits(tmp_path):
    from panformer.sign.domain import SignDomain, SignRecipe

    build_synthetic(tmp_path, SyntheticSpec(signs=3, signers=5, repetitions=1))
    table = pd.read_csv(tmp_path / "labels.csv")
    pd.DataFrame({"path": table["path"], "participant_id": table["signer"], "sequence_id": range(len(table)),
                  "sign": table["label"]}).to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "labels.csv").unlink()
    recipe = SignRecipe.model_validate({"data": {"source": str(tmp_path), "val_signers": 0.2, "test_signers": 0.2}})
    splits = SignDomain().task(recipe).load_splits(recipe)
    assert splits.info["classes"] == sorted(set(table["label"]))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)
    item = splits.test[0]
    assert item["features"].shape[0] == item["valid"].shape[0] and item["valid"].any()
    with pytest.raises(UserError, match=r"neither labels\.csv, train\.csv \(ASL Signs\) nor train_labels\.csv \(AUTSL\)"):
        SignDomain().task(recipe).load_splits(recipe, source=str(tmp_path / "signer000"))


def autsl_folder(tmp_path, *, signers: int = 5):
    """An AUTSL-shaped folder: train_labels.csv, SignList_ClassId_TR_EN.csv, train_landmarks/<sample>_color.parquet."""
    import shutil

    source = tmp_path / "synthetic"
    table = pd.read_csv(build_synthetic(source, SyntheticSpec(signs=3, signers=signers, repetitions=1)))
    classes = sorted(set(table["label"]))
    folder = tmp_path / "autsl"
    (folder / "train_landmarks").mkdir(parents=True)
    rows = []
    for n, row in enumerate(table.itertuples()):
        sample = f"signer{row.signer}_sample{n}"
        shutil.copy(source / row.path, folder / "train_landmarks" / f"{sample}_color.parquet")
        rows.append(f"{sample},{classes.index(row.label)}")
    (folder / "train_labels.csv").write_text("\n".join(rows) + "\n")
    pd.DataFrame({"ClassId": range(3), "TR": ["a", "b", "c"], "EN": classes}).to_csv(
        folder / "SignList_ClassId_TR_EN.csv", index=False)
    return folder, table


def test_an_autsl_folder_loads_with_english_names_and_signer_splits(tmp_path):
    from panformer.sign.domain import SignDomain, SignRecipe

    folder, table = autsl_folder(tmp_path)
    recipe = SignRecipe.model_validate({"data": {"source": str(folder), "val_signers": 0.2, "test_signers": 0.2}})
    splits = SignDomain().task(recipe).load_splits(recipe)
    assert splits.info["classes"] == sorted(set(table["label"]))  # names from the sign list, not ids
    signers = splits.info["signers"]
    assert not set(signers["train"]) & (set(signers["val"]) | set(signers["test"]))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 3, 3)


def test_autsl_without_extracted_landmarks_says_how_to_extract(tmp_path):
    from panformer.sign.data import read_autsl

    folder, _ = autsl_folder(tmp_path)
    next((folder / "train_landmarks").iterdir()).unlink()
    with pytest.raises(UserError, match="panformer-sign extract"):
        read_autsl(folder)
