"""The music CLI end to end through real subprocesses: a tiny train -> evaluate --json -> predict
(unconditional, instrument-informed, continuation), and bad input answered with one line and exit code 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from panformer.music.cli import app
from panformer.music.midi import read_midi
from tests.cli import assert_user_error, invoke
from tests.music.helpers import cli, write_prompt

TINY_RECIPE = """\
description: tiny MMT for the tests
data:
  source: music21:bach
  cache_dir: {cache}
  max_pieces: 6
  max_len: 96
  max_beat: 64
  val_fraction: 0.2
  test_fraction: 0.2
model: {{dim: 32, depth: 1, num_heads: 2, mlp_ratio: 2.0, dropout: 0.0}}
generate: {{max_events: 96, eval_samples: 1, eval_events: 64}}
train: {{epochs: 2, batch_size: 8, lr: 0.003, device: cpu}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("music")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(cache=root / "data"))
    result = cli("train", "--recipe", str(recipe), "--out", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root


def test_evaluate_reports_field_nll_music_metrics_and_speed(trained):
    plot = trained / "eval.png"
    result = cli("evaluate", "--checkpoint", str(trained / "run"), "--json", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    for field in ("type", "beat", "position", "pitch", "duration", "instrument"):
        assert metrics[f"nll_{field}"] > 0 and metrics[f"ppl_{field}"] > 1
    assert metrics["nll"] == pytest.approx(metrics["loss"], rel=1e-4) and metrics["nll_unigram"] > 0
    assert 0 < metrics["test_scale_consistency"] <= 1 and 0 < metrics["gen_scale_consistency"] <= 1
    assert 0 < metrics["test_pitch_class_entropy"] <= 3.59 and 0 < metrics["gen_groove_consistency"] <= 1
    assert metrics["notes_per_s_cache"] > 0 and metrics["notes_per_s_nocache"] > 0
    assert metrics["cache_identical"] == 1.0
    assert metrics["seconds_per_1024_tokens"] > 30  # chorales: far more than REMI's ~25 s
    assert plot.read_bytes().startswith(b"\x89PNG")


def loads_everywhere(path: Path) -> int:
    """Notes in the file, read by symusic (our reader), music21 and miditok; all must agree it has notes."""
    import miditok
    import music21

    notes = len(read_midi(path).notes)
    score = music21.converter.parse(str(path))
    assert len(score.flatten().notes) > 0
    tokens = miditok.REMI().encode(path)
    assert len(tokens[0].ids if isinstance(tokens, list) else tokens.ids) > 0
    return notes


def test_predict_unconditional_with_piano_roll(trained):
    out = trained / "gen" / "song.mid"
    result = cli("predict", "--checkpoint", str(trained / "run"), "--output", str(out), "--plot", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert loads_everywhere(out) > 0
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


def test_predict_instrument_informed(trained):
    out = trained / "gen" / "trio.mid"
    result = cli("predict", "--checkpoint", str(trained / "run"), "--output", str(out),
                 "--instruments", "piano,violin,cello", "--bars", "4")
    assert result.returncode == 0, result.stderr
    piece = read_midi(out)
    assert {n.instrument for n in piece.notes} <= {"piano", "violin", "cello"}
    assert max(n.beat for n in piece.notes) < 16  # 4 bars of 4/4


def test_predict_continues_a_prompt(trained):
    prompt = write_prompt(trained / "prompt.mid", beats=4)
    out = trained / "gen" / "continued.mid"
    result = cli("generate", "--checkpoint", str(trained / "run"), "--prompt", str(prompt), "--output", str(out),
                 "--bars", "2", "--audio")
    assert result.returncode == 0, result.stderr
    before, after = read_midi(prompt).notes, read_midi(out).notes
    assert set(before) <= set(after) and len(after) > len(before)  # the prompt is kept, then continued
    assert max(n.beat for n in after) < 4 + 8
    assert {n.instrument for n in after} <= {n.instrument for n in before}
    assert out.with_suffix(".wav").is_file()  # a SoundFont's instruments, else the built-in synthesiser


def write_chorale(path: Path) -> Path:
    """Bach's four-voice chorale BWV 66.6 (music21's bundled corpus) as music21 writes it to MIDI: 157 notes
    in 9 bars of 4/4, more than the tiny model's context of 96 events."""
    import music21

    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(path))
    return path


def test_predict_continues_a_piece_longer_than_the_context(trained):
    prompt = write_chorale(trained / "bwv66.6.mid")
    out = trained / "gen" / "chorale.mid"
    result = cli("predict", "--checkpoint", str(trained / "run"), "--prompt", str(prompt), "--output", str(out),
                 "--bars", "2")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("prompt:")]
    assert len(said) == 1 and "160 events do not fit the context of 96 with room for 2 bars" in said[0], said
    used = int(re.search(r"using its last (\d+) bars \((\d+) events\)", said[0]).group(1))
    assert 1 <= used < 9
    before, after = read_midi(prompt), read_midi(out)
    onsets = {(n.beat, n.position, n.pitch) for n in after.notes}
    assert {(n.beat, n.position, n.pitch) for n in before.notes} <= onsets  # the whole piece, then more
    new = [n for n in after.notes if (n.beat, n.position, n.pitch) not in
           {(m.beat, m.position, m.pitch) for m in before.notes}]
    assert new and min(n.beat for n in new) >= max(n.beat for n in before.notes)
    assert max(n.beat for n in new) < 36 + 2 * 4  # the piece ends at beat 36: two more bars
    chosen = invoke(app, "predict", "--checkpoint", str(trained / "run"), "--prompt", str(prompt), "--output",
                    str(out), "--bars", "1", "--prompt-bars", "1")
    assert chosen.exit_code == 0, chosen.stderr
    assert "prompt: using its last 1 bars" in chosen.stderr


def test_prompt_bars_that_do_not_fit_are_one_line_and_exit_2(trained):
    prompt = write_chorale(trained / "bwv66.6-bad.mid")
    out = trained / "bad-bars" / "x.mid"
    run = str(trained / "run")
    result = invoke(app, "predict", "--checkpoint", run, "--prompt", str(prompt), "--output", str(out),
                    "--bars", "2", "--prompt-bars", "8")
    assert_user_error(result, "--prompt-bars 8", "do not fit the context of 96", "give --prompt-bars")
    assert_user_error(invoke(app, "predict", "--checkpoint", run, "--prompt", str(prompt), "--output", str(out),
                             "--prompt-bars", "12"), "--prompt-bars 12", "has 9 bars")
    assert_user_error(invoke(app, "predict", "--checkpoint", run, "--output", str(out), "--prompt-bars", "2"),
                      "--prompt-bars", "--prompt")
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no output file


def test_bad_input_is_one_line_and_exit_2(trained):
    run = str(trained / "run")
    corrupt = trained / "corrupt.mid"
    corrupt.write_bytes(b"MThd garbage")
    out = trained / "bad" / "x.mid"
    assert_user_error(cli("predict", "--checkpoint", run, "--prompt", str(corrupt), "--output", str(out)),
                      "corrupt.mid", "not a readable MIDI")
    import symusic

    empty = trained / "empty.mid"
    symusic.Score(480).dump_midi(str(empty))
    assert_user_error(cli("predict", "--checkpoint", run, "--prompt", str(empty), "--output", str(out)),
                      "empty.mid", "no notes")
    assert_user_error(cli("predict", "--checkpoint", run, "--instruments", "piano,kazoo", "--output", str(out)),
                      "unknown instrument 'kazoo'")
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing half-written
    folder = trained / "midis"
    folder.mkdir()
    (folder / "broken.mid").write_bytes(b"\x00\x01")
    assert_user_error(cli("train", "--recipe", str(trained / "tiny.yaml"), "--data", str(folder),
                          "--out", str(trained / "run-bad")), "broken.mid")
    assert_user_error(cli("train", "--recipe", "no-such-recipe"), "unknown recipe")
