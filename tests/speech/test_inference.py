"""Long-file separation: chunked overlap-add equals whole-file separation and keeps speaker order."""

from __future__ import annotations

import torch
from torch import nn

from panformer.speech.audio import StreamReader
from panformer.speech.inference import separate_stream
from panformer.speech.model import MossFormerSeparator
from tests.speech.signals import speechlike, write_wav


class ShufflingLocalSeparator(nn.Module):
    """A stand-in separator whose outputs depend only on each sample (so chunking cannot change them)
    but come out in a random speaker order on every call, as a real separator's may."""

    num_speakers = 3

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.generator = torch.Generator().manual_seed(0)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        outputs = torch.stack([mixture, mixture.square(), mixture.abs().sqrt()], dim=1)
        return outputs[:, torch.randperm(3, generator=self.generator)]


class RescalingSeparator(ShufflingLocalSeparator):
    """Like the shuffling stand-in, but every call also picks its own gain (and sign) per speaker, as a
    separator trained with a scale-invariant loss may."""

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        gains = torch.empty(3).uniform_(0.2, 5.0, generator=self.generator)
        signs = torch.randint(0, 2, (3,), generator=self.generator) * 2 - 1
        return super().forward(mixture) * (gains * signs)[None, :, None]


def whole(model, reader):
    return torch.cat(list(separate_stream(model, reader, chunk=reader.num_frames, overlap=0,
                                          device=torch.device("cpu"))), dim=-1)


def test_chunked_equals_whole_and_speaker_order_is_kept(tmp_path):
    path = write_wav(tmp_path / "mix.wav", speechlike(3.0) + speechlike(3.0, pitch=230, seed=1))
    reader = StreamReader(path, 8000)
    model = ShufflingLocalSeparator()
    reference = whole(model, reader)
    first = reference  # whichever order the single call chose is the order to keep
    chunked = torch.cat(list(separate_stream(model, reader, chunk=2000, overlap=500, device=torch.device("cpu"))), -1)
    assert model.calls > 10  # 24000 samples in chunks of 2000 with hop 1500
    assert chunked.shape == reference.shape
    # Chunks are aligned to the first chunk's order, which may differ from the whole-file call's.
    perm = [int(torch.argmin(torch.stack([(chunked[i] - first[j]).abs().max() for j in range(3)]))) for i in range(3)]
    assert sorted(perm) == [0, 1, 2]
    assert torch.allclose(chunked, first[perm], atol=1e-5)


def test_short_file_is_one_chunk_equal_to_the_model_output(tmp_path):
    torch.manual_seed(0)
    model = MossFormerSeparator(num_speakers=2, filters=16, kernel_size=16, dim=16, num_layers=1, chunk_size=32,
                                query_key_dim=8, expansion_factor=2.0, fsmn_channels=8, fsmn_order=4).eval()
    path = write_wav(tmp_path / "short.wav", speechlike(0.5))
    reader = StreamReader(path, 8000)
    pieces = list(separate_stream(model, reader, chunk=8000, overlap=1000, device=torch.device("cpu")))
    assert len(pieces) == 1
    with torch.no_grad():
        expected = model(reader.read(0, reader.num_frames)[None])[0]
    assert torch.allclose(pieces[0], expected, atol=1e-6)


def test_real_separator_chunked_is_close_to_whole(tmp_path):
    """With a real (untrained) separator chunks see less context, so outputs differ a little; the
    overlap-add must still track the whole-file output closely and in the same speaker order."""
    torch.manual_seed(0)
    model = MossFormerSeparator(num_speakers=2, filters=16, kernel_size=16, dim=16, num_layers=1, chunk_size=32,
                                query_key_dim=8, expansion_factor=2.0, fsmn_channels=8, fsmn_order=4).eval()
    path = write_wav(tmp_path / "mix.wav", speechlike(2.0) + speechlike(2.0, pitch=260, seed=3))
    reader = StreamReader(path, 8000)
    reference = whole(model, reader)
    chunked = torch.cat(list(separate_stream(model, reader, chunk=6000, overlap=1000, device=torch.device("cpu"))), -1)
    from panformer.speech.metrics import si_sdr

    straight = si_sdr(chunked, reference).mean()
    swapped = si_sdr(chunked.flip(0), reference).mean()
    assert straight > swapped
    assert straight > 5


def test_memory_is_bounded_by_the_chunk_not_the_file(tmp_path):
    """Only one chunk is read and held at a time, and the pieces come out as the file is read."""
    path = write_wav(tmp_path / "long.wav", speechlike(6.0))
    reader = StreamReader(path, 8000)
    reads: list[int] = []
    original = reader.read

    def recording_read(start: int, stop: int) -> torch.Tensor:
        reads.append(stop - start)
        return original(start, stop)

    reader.read = recording_read
    pieces = separate_stream(ShufflingLocalSeparator(), reader, chunk=4000, overlap=1000, device=torch.device("cpu"))
    first = next(pieces)
    assert len(reads) == 1 and first.shape[-1] <= 4000  # output starts before the file is read through
    rest = list(pieces)
    assert max(reads) <= 4000 and max(p.shape[-1] for p in rest) <= 4000
    assert first.shape[-1] + sum(p.shape[-1] for p in rest) == reader.num_frames


def test_chunks_keep_one_loudness_per_speaker(tmp_path):
    path = write_wav(tmp_path / "mix.wav", speechlike(3.0) + speechlike(3.0, pitch=230, seed=1))
    reader = StreamReader(path, 8000)
    model = RescalingSeparator()
    chunked = torch.cat(list(separate_stream(model, reader, chunk=2000, overlap=500, device=torch.device("cpu"))), -1)
    mixture = reader.read(0, reader.num_frames)
    clean = torch.stack([mixture, mixture.square(), mixture.abs().sqrt()])
    for estimate in chunked:
        # One speaker of the stand-in up to a single gain for the whole file: the ratio is constant.
        match = max(range(3), key=lambda j: abs(float(torch.nn.functional.cosine_similarity(estimate, clean[j], 0))))
        active = clean[match].abs() > 1e-3
        ratio = estimate[active] / clean[match][active]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-3), (ratio.min(), ratio.max())
