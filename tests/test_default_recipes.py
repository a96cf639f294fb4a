"""`train --data X` without --recipe: each domain picks the recipe the kind of data implies (its
`default_recipe`), with the data laid out as a user would have it; data it cannot tell is a one-line error.
One real CLI run end to end on the cheapest domain (graphs)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from panformer.engine.config import list_recipes
from panformer.engine.domain import Domain
from panformer.engine.errors import UserError
from panformer.graphs.domain import GraphsDomain
from panformer.molecules.domain import MoleculesDomain
from panformer.music.domain import MusicDomain
from panformer.relational.domain import RelationalDomain
from panformer.sign.domain import SignDomain
from panformer.speech.domain import SpeechDomain
from tests.cli import run_cli

# A MIDI file with one empty track: enough for a folder to be "a folder of MIDI files".
EMPTY_MIDI = b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x00\x60MTrk\x00\x00\x00\x04\x00\xff\x2f\x00"


def write(path: Path, content: str | bytes = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def wav(path: Path) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.zeros(800, np.float32), 8000)
    return path


def graph_folder(root: Path, *, graphs_csv: str | None = None) -> Path:
    if graphs_csv is None:
        write(root / "nodes.csv", "id,f0,label\na,0.1,x\nb,0.2,y\nc,0.3,x\n")
        write(root / "edges.csv", "src,dst\na,b\nb,c\n")
    else:
        write(root / "nodes.csv", "graph,id,f0\ng1,0,1\ng1,1,1\ng2,0,1\ng2,1,1\n")
        write(root / "edges.csv", "graph,src,dst\ng1,0,1\ng2,0,1\n")
        write(root / "graphs.csv", graphs_csv)
    return root


def librimix(root: Path) -> Path:
    for split in ("train-100", "dev", "test"):
        for kind in ("mix_clean", "s1", "s2"):
            wav(root / split / kind / "61-70968-0000_8455-210777-0012.wav")
    return root


def asl_signs(root: Path) -> Path:
    write(root / "train_landmark_files" / "16069" / "100015657.parquet", b"PAR1")
    write(root / "train.csv", "path,participant_id,sequence_id,sign\n"
                              "train_landmark_files/16069/100015657.parquet,16069,100015657,cloud\n")
    return root


def landmark_folder(root: Path) -> Path:
    write(root / "a.parquet", b"PAR1")
    write(root / "labels.csv", "path,label,signer\na.parquet,hello,s1\n")
    return root


def duckdb_file(path: Path) -> Path:
    import duckdb

    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, signup_time TIMESTAMP)")
    return path


def sqlite_file(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    return path


# (domain, builds --data in tmp_path (returns its string), the expected recipe)
CHOICES: list[tuple[type[Domain], Callable[[Path], str | None], str]] = [
    (GraphsDomain, lambda d: str(graph_folder(d / "graph")), "karate"),
    (GraphsDomain, lambda d: str(graph_folder(d / "many", graphs_csv="graph,label\ng1,a\ng2,b\n")), "demo"),
    (GraphsDomain, lambda d: str(graph_folder(d / "reg", graphs_csv="graph,label\ng1,0.5\ng2,1.25\n")),
     "triangles"),
    (GraphsDomain, lambda d: "pyg:KarateClub", "karate"),
    (GraphsDomain, lambda d: "pyg:Cora", "cora"),
    (GraphsDomain, lambda d: "pyg:TU/MUTAG", "demo"),
    (GraphsDomain, lambda d: "synthetic:sbm", "sbm"),
    (GraphsDomain, lambda d: str(write(d / "events.csv", "src,dst,t\n1,2,0.5\n2,3,1.0\n")), "temporal-link"),
    (GraphsDomain, lambda d: "tgb:tgbl-wiki", "temporal-link"),
    (GraphsDomain, lambda d: str(write(d / "flows.csv", "IPV4_SRC_ADDR,IPV4_DST_ADDR,IN_BYTES,Label\n"
                                                        "10.0.0.1,10.0.0.2,100,0\n")), "flows"),
    (GraphsDomain, lambda d: str(write(d / "images" / "cat" / "1.png", b"\x89PNG").parent.parent),
     "digits-sagvit"),
    (GraphsDomain, lambda d: None, "karate"),
    (SpeechDomain, lambda d: str(librimix(d / "Libri2Mix" / "wav8k" / "min")), "libri2mix"),
    (SpeechDomain, lambda d: "espeak", "small"),
    (SpeechDomain, lambda d: f"utterances:{wav(d / 'voices' / 'alice' / 'a.wav').parent.parent}", "small"),
    (SpeechDomain, lambda d: None, "small"),
    (SignDomain, lambda d: str(asl_signs(d / "asl-signs")), "asl-signs"),
    (SignDomain, lambda d: str(landmark_folder(d / "landmarks")), "tslformer"),
    (SignDomain, lambda d: str(landmark_folder(d / "landmarks") / "labels.csv"), "tslformer"),
    (SignDomain, lambda d: str(write(d / "autsl" / "train_labels.csv", "signer0_sample1,3\n").parent), "autsl"),
    (SignDomain, lambda d: None, "tslformer"),
    (MoleculesDomain, lambda d: str(write(d / "h2.xyz", "2\nenergy=-1.0\nH 0 0 0\nH 0 0 0.74\n")), "coordformer"),
    (MoleculesDomain, lambda d: str(write(d / "set.extxyz", "2\n\nH 0 0 0\nH 0 0 0.74\n")), "coordformer"),
    (MoleculesDomain, lambda d: str(write(d / "mols.sdf", "\n")), "coordformer"),
    (MoleculesDomain, lambda d: str(write(d / "labelled.npz", b"PK")), "coordformer"),
    (MoleculesDomain, lambda d: None, "coordformer"),
    (MusicDomain, lambda d: str(write(d / "midi" / "album" / "song.mid", EMPTY_MIDI).parent.parent), "mmt"),
    (MusicDomain, lambda d: "music21:bach,haydn", "mmt"),
    (MusicDomain, lambda d: None, "mmt"),
    (RelationalDomain, lambda d: str(duckdb_file(d / "shop.duckdb")), "database"),
    (RelationalDomain, lambda d: str(sqlite_file(d / "app.sqlite")), "database"),
    (RelationalDomain, lambda d: f"duckdb:///{duckdb_file(d / 'shop.duckdb')}", "database"),
    (RelationalDomain, lambda d: "postgresql://me@localhost:5432/shop", "database"),
    (RelationalDomain, lambda d: "relbench:rel-f1/driver-dnf", "database"),
    (RelationalDomain, lambda d: "demo:stream:1", "demo"),
    (RelationalDomain, lambda d: None, "demo"),
]


@pytest.mark.parametrize(("domain_type", "make_data", "expected"), CHOICES,
                         ids=[f"{d.name}-{i}-{r}" for i, (d, _, r) in enumerate(CHOICES)])
def test_data_implies_the_recipe(tmp_path, domain_type, make_data, expected):
    domain = domain_type()
    choice = domain.default_recipe(make_data(tmp_path))
    assert choice.name == expected, choice
    assert expected in list_recipes(domain.name)  # a recipe that exists
    assert choice.reason and "\n" not in choice.reason


# (domain, builds --data, a word of the one-line error)
UNTELLABLE: list[tuple[type[Domain], Callable[[Path], str], str]] = [
    (GraphsDomain, lambda d: str(d / "missing"), "no such file"),
    (GraphsDomain, lambda d: "pyg:QM9", "node or graph labels"),
    (GraphsDomain, lambda d: "synthetic:nope", "unknown synthetic set"),
    (GraphsDomain, lambda d: str(write(d / "table.csv", "a,b\n1,2\n")), "neither src, dst, t"),
    (SpeechDomain, lambda d: str(d / "missing"), "not a folder"),
    (SpeechDomain, lambda d: str(wav(d / "flat" / "item1_mix.wav").parent), "test data only"),
    (SpeechDomain, lambda d: str(wav(d / "voices" / "alice" / "a.wav").parent.parent), "utterances:"),
    (SignDomain, lambda d: str(write(d / "videos" / "hello.mp4", b"\0").parent), "panformer-sign extract"),
    (SignDomain, lambda d: str(write(d / "lm" / "a.parquet", b"PAR1").parent), "without labels"),
    (SignDomain, lambda d: str(d / "missing"), "no such file"),
    (MoleculesDomain, lambda d: str(write(d / "list.smi", "CCO ethanol\n")), "panformer-molecules label"),
    (MoleculesDomain, lambda d: str(write(d / "notes.txt", "hi\n")), "not a structure file"),
    (MoleculesDomain, lambda d: str(d / "missing.xyz"), "no such file"),
    (MusicDomain, lambda d: str(write(d / "song.mid", EMPTY_MIDI)), "one MIDI file"),
    (MusicDomain, lambda d: str(write(d / "empty" / "readme.txt", "").parent), "no .mid/.midi files"),
    (RelationalDomain, lambda d: str(d / "missing.duckdb"), "no such file"),
    (RelationalDomain, lambda d: str(write(d / "table.csv", "a\n1\n")), "not a database file"),
]


@pytest.mark.parametrize(("domain_type", "make_data", "needle"), UNTELLABLE,
                         ids=[f"{d.name}-{i}" for i, (d, _, _) in enumerate(UNTELLABLE)])
def test_data_of_no_known_kind_is_a_one_line_error(tmp_path, domain_type, make_data, needle):
    domain = domain_type()
    data = make_data(tmp_path)
    with pytest.raises(UserError) as err:
        domain.default_recipe(data)
    message = str(err.value)
    assert message.startswith(f"--data {data}:") and needle in message and "\n" not in message
    assert ", ".join(list_recipes(domain.name)) in message  # the recipes to choose from instead


@pytest.mark.slow  # ~10 s alone (one interpreter start, one epoch of one step)
def test_train_without_recipe_end_to_end(tmp_path):
    """The graphs CLI (the cheapest domain) on a CSV graph folder: picks `karate`, says so, trains."""
    rng = np.random.default_rng(0)
    nodes = "".join(f"n{i},{i % 2 + rng.random():.3f},{rng.random():.3f},{'ab'[i % 2]}\n" for i in range(40))
    edges = "".join(f"n{i},n{(i + 1) % 40}\nn{i},n{(i + 2) % 40}\n" for i in range(40))
    folder = tmp_path / "graph"
    write(folder / "nodes.csv", "id,f0,f1,label\n" + nodes)
    write(folder / "edges.csv", "src,dst\n" + edges)
    run = tmp_path / "run"
    done = run_cli("panformer.graphs.cli", "train", "--data", str(folder), "--out", str(run),
                   "--set", "train.epochs=1", "--set", "data.steps_per_epoch=1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "no --recipe: using 'karate' (a CSV graph folder" in done.stderr
    karate = yaml.safe_load(list_recipes("graphs")["karate"].read_text())
    assert yaml.safe_load((run / "recipe.yaml").read_text())["description"] == karate["description"]
    assert "accuracy" in json.loads((run / "metrics.json").read_text())["test"]
