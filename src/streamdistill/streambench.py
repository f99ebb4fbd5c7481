"""The streaming benchmarks: how much the KV cache of :mod:`streamdistill.streaming` saves, and what
streams as users have them cost.

* :func:`stream_benchmark` - the paper's benchmark: an L-token prefix, D tokens per update, the
  student's cached update against recomputing the teacher B, the student itself and Echo on A,
  side by side in one process; :func:`stream_sweep` the same at several L;
  :func:`static_benchmark` the fixed-shape (GPU) path;
* :func:`profile_update` - where one update's time goes, transformers' path beside the direct one;
* :func:`many_streams_benchmark` - several streams' appends in one forward against one at a time;
* :func:`chat_replay`, :func:`turn_chunks`, :func:`stream_corpus`, :func:`conversation_replay`,
  :func:`streamed_retrieval` - real conversations (QMSum meetings) streamed turn by turn, their
  recomputes, drift, bounded-memory windows and retrieval as they grow.

The encoders come from the caller (``registry.stream_encoders``: the trained stage models, or
randomly initialised ones of the profile's shape, :func:`random_benchmark_encoders`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from .decoders import random_decoder
from .encoder import Encoder
from .profiles import Profile
from .streaming import StaticBatch, StreamingEncoder, append_batch, recompute, run_backbone
from .testing import tiny_tokenizer


def chat_replay(encoder: Encoder, turns: Sequence[str]) -> list[dict[str, Any]]:
    """A conversation appended turn by turn: per turn, its new tokens, the stream's length, the
    append's and a full ``encode``'s milliseconds, and the cosine distance between the two vectors."""
    stream = StreamingEncoder(encoder)
    rows = []
    with torch.inference_mode():
        for k, turn in enumerate(turns, 1):
            start = time.perf_counter()
            cached = stream.append(turn)
            append_ms = 1e3 * (time.perf_counter() - start)
            start = time.perf_counter()
            full = encoder.encode("".join(turns[:k]), max_length=stream.max_positions)
            recompute_ms = 1e3 * (time.perf_counter() - start)
            rows.append({"turn": turn.strip()[:48] + "...",
                         "new tokens": len(encoder.tokenizer(turn, add_special_tokens=False)["input_ids"]),
                         "tokens so far": stream.n_tokens, "append (ms)": append_ms, "recompute (ms)": recompute_ms,
                         "cosine distance": _cosine_distance(cached, full)})
    return rows


# =============================================================================================
# the streaming benchmark of the paper
# =============================================================================================
#
# A stream holds an L-token prefix; each update appends D tokens. The student (causal, KV cache)
# pays for the D new tokens against L cached ones; every other method re-embeds the whole L + D
# tokens from scratch: the student itself without its cache, the bidirectional teacher B, and
# Echo on A (which embeds the text twice). The speed-up's physical limit is the token ratio
# (L + D) / D (about 33 at L = 4096, D = 128): attention makes a recompute cost a little more than
# linear in L, the per-call overhead of a small update a little more than its tokens.

METHODS = ("student_kv", "student_recompute", "teacher_recompute", "echo_recompute")


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return max(0.0, float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))


def random_benchmark_encoders(profile, *, max_positions: int | None = None, seed: int = 0) -> dict[str, Encoder]:
    """Randomly initialised student / teacher / Echo encoders of the profile's decoder shape.

    One backbone (:func:`~streamdistill.decoders.random_decoder` of the profile) shared by the
    three: causal + mean (C), bidirectional + mean (B), causal + echo (A+Echo). Latency does not
    depend on the weights, only on the architecture and the token counts. ``max_positions``
    defaults to the profile's; pass more to let Echo's doubled text fit.
    """
    tokenizer = tiny_tokenizer(vocab_size=min(300, profile.vocab_size))
    lm = random_decoder(profile, vocab_size=profile.vocab_size, max_positions=max_positions, seed=seed).eval()
    return {
        "student": Encoder(lm, tokenizer, attention="causal", pooling="mean").eval(),
        "teacher": Encoder(lm, tokenizer, attention="bidirectional", pooling="mean").eval(),
        "echo_model": Encoder(lm, tokenizer, attention="causal", pooling="echo").eval(),
    }


def _echo_ids(encoder: Encoder, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Echo's input for bare token ids, laid out as ``encode`` does (the text's template), and the
    mask of the second copy it pools."""
    full, (start, end) = encoder.template.layout(ids.tolist(), echo=True)
    pool = torch.zeros(len(full), dtype=torch.long)
    pool[start:end] = 1
    return torch.tensor(full, dtype=torch.long), pool


def _token_stream(n: int, vocab: int, seed: int) -> torch.Tensor:
    """``n`` seeded random token ids in [2, vocab) (0 and 1 are often pad / eos)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(min(2, vocab - 1), vocab, (n,), generator=generator)


def _clock(device: torch.device) -> float:
    """``time.perf_counter()`` once queued work on ``device`` is done (CUDA runs asynchronously: a
    clock read before it returns early)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def stream_benchmark(profile: Profile, prefix: int | None = None, delta: int | None = None, updates: int | None = None,
                     *, student: Encoder, teacher: Encoder, echo_model: Encoder, seed: int = 0,
                     growing: bool = False, weights: str = "given", verbose: bool = False,
                     progress: bool = False) -> dict[str, Any]:
    """Latency of re-embedding a growing stream: the student's KV cache against recomputation.

    A seeded stream of ``prefix + updates * delta`` random token ids. The student appends the
    prefix once (not timed); then, for each update, ``delta`` new tokens go through the KV cache
    (timed: the whole ``append_ids`` call, embedding included), while the student without cache,
    the teacher B and Echo on A embed the whole current sequence from scratch (timed, each on the
    append's attention path: :func:`recompute`). By default every update starts from the same
    L-token prefix (the cache is rolled back between updates, untimed), so each update is exactly
    L -> L + D and the token ratio (L + D) / D is the speed-up's limit; ``growing=True`` lets the
    stream grow instead (it must fit the positions).

    Same process, same thread count, methods interleaved within each update; one warm-up update
    (the first delta, rolled back) is excluded; latencies are medians over ``updates``; on a GPU
    the clock starts and stops after the device has finished its queued work.
    ``cosine_distances`` compare the KV-cache embedding with the student's recompute of the same
    ids; ``oracle_cosine_distance`` compares the last one with transformers' forward
    (``Encoder.forward``, untimed). ``weights`` labels the encoders in the result ("trained",
    "random"); the registry's ``stream_encoders`` loads the book's. ``progress`` shows a bar of
    the updates on stderr; ``verbose`` prints each update's latencies.
    """
    from tqdm.auto import tqdm

    from .hardware import machine_speed

    L = int(prefix if prefix is not None else profile.stream_prefix)
    D = int(delta if delta is not None else profile.stream_delta)
    U = int(updates if updates is not None else profile.stream_updates)
    if L < 1 or D < 1 or U < 1:
        raise ValueError(f"prefix, delta and updates must be >= 1, got {L}, {D}, {U}")
    longest = L + (U * D if growing else D)
    if teacher.attention != "bidirectional":
        warnings.warn(f"the teacher has attention={teacher.attention!r}, not bidirectional", stacklevel=2)
    if echo_model.pooling != "echo":
        warnings.warn(f"the Echo model has pooling={echo_model.pooling!r}, not echo", stacklevel=2)
    stream = StreamingEncoder(student)
    closing = torch.tensor(stream.suffix_ids, dtype=torch.long)
    longest += len(closing)  # the closing special tokens ride along
    if longest > student.max_positions:
        raise ValueError(f"the stream needs {longest} positions, the student has {student.max_positions}: "
                         "lower prefix/delta/updates (or growing=False)")
    vocab = min(int(m.backbone.config.vocab_size) for m in (student, teacher, echo_model))
    ids = _token_stream(L + U * D, vocab, seed)
    deltas = [ids[L + u * D: L + (u + 1) * D] for u in range(U)]
    speed = machine_speed() if student.device.type == "cpu" else {}

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    distances: list[float] = []
    echo_beyond = False
    device = student.device

    with torch.inference_mode():
        stream.append_ids(ids[:L])
        at_prefix = stream.state
        for u in tqdm(range(-1, U), desc="stream updates", unit="update", disable=not progress):
            # u = -1: warm-up on the first delta, rolled back, not recorded
            new = deltas[max(u, 0)]
            if not growing or u == 0:
                stream.load_state(at_prefix)
            bare = torch.cat([ids[:stream.n_tokens], new])
            current = torch.cat([bare, closing])  # what encode() sees: text + closing tokens
            echo_in, echo_pool = _echo_ids(echo_model, bare)
            echo_beyond |= len(echo_in) > echo_model.max_positions

            t0 = _clock(device)
            incremental = stream.append_ids(new)
            t1 = _clock(device)
            full = recompute(student, current)
            t2 = _clock(device)
            recompute(teacher, current)
            t3 = _clock(device)
            recompute(echo_model, echo_in, echo_pool)
            t4 = _clock(device)
            if u < 0:
                continue
            for method, seconds in zip(METHODS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[method].append(seconds * 1e3)
            distances.append(_cosine_distance(incremental, full))
            if verbose:
                print(f"update {u + 1}/{U}: " + ", ".join(f"{m} {times[m][-1]:.1f} ms" for m in METHODS), flush=True)
        oracle = _cosine_distance(incremental, stream.full_embedding())
        cache_mb = stream._cache.used_bytes() / 2**20

    latency = {m: float(np.median(v)) for m, v in times.items()}
    kv = latency["student_kv"]
    per_update = {m: [t / k for t, k in zip(times[m], times["student_kv"])] for m in METHODS[1:]}
    return {
        "profile": profile.name,
        "prefix": L,
        "delta": D,
        "updates": U,
        "growing": bool(growing),
        "weights": weights,
        "attention_path": stream.attention_path,
        "precision": str(student.dtype).removeprefix("torch."),
        "speedup_vs_teacher": latency["teacher_recompute"] / kv,
        # per update, side by side in the same update: the figures a rule over updates reads
        "speedups_vs_teacher": per_update["teacher_recompute"],
        "speedups_vs_recompute": per_update["student_recompute"],
        "speedup_vs_echo": latency["echo_recompute"] / kv,
        "speedup_vs_recompute": latency["student_recompute"] / kv,
        "token_ratio_limit": (L + D) / D,
        "max_cosine_distance": max(distances),
        "cosine_distances": distances,
        "oracle_cosine_distance": oracle,
        "latency_ms": latency,
        "latency_ms_all": times,
        "cache_mb": cache_mb,
        "echo_tokens": int(len(echo_in)),
        "echo_beyond_positions": bool(echo_beyond),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "machine_speed": speed,
    }


def stream_sweep(profile: Profile, prefixes: Sequence[int] = (256, 512, 1024, 2048, 4096), delta: int = 128,
                 updates: int | None = None, *, student: Encoder, teacher: Encoder, echo_model: Encoder,
                 seed: int = 0, weights: str = "given") -> list[dict[str, Any]]:
    """:func:`stream_benchmark` at each prefix length (the same encoders): latency against L."""
    updates = int(updates if updates is not None else min(profile.stream_updates, 5))
    return [stream_benchmark(profile, prefix=int(p), delta=delta, updates=updates, seed=seed, weights=weights,
                             student=student, teacher=teacher, echo_model=echo_model) for p in prefixes]


def static_benchmark(student: Encoder, teacher: Encoder, prefix: int, delta: int, updates: int, *, batch: int = 1,
                     seed: int = 0, graphs: bool | None = None) -> dict[str, Any]:
    """The GPU path's latency (:class:`StaticBatch`, CUDA graphs where the device is CUDA): ``batch``
    streams of ``prefix`` seeded tokens each append ``delta`` tokens per update, ``updates`` times
    (growing; one warm-up update first, which also captures the graph), against the teacher
    recomputing the same ``batch`` sequences in one forward (:func:`run_backbone`, packed).
    The clock starts and stops with the device idle. ``max_cosine_distance``: the static
    embeddings of the first update against the dynamic path's."""
    vocab = int(student.backbone.config.vocab_size)
    closing = list(student.template.tail)
    step = delta + len(closing)
    capacity = prefix + (updates + 1) * delta + len(closing)
    static = StaticBatch(student, batch, delta, capacity, graphs=graphs)
    streams, ids = [], []
    device = student.device
    with torch.inference_mode():
        for b in range(batch):
            tokens = _token_stream(prefix + (updates + 1) * delta, vocab, seed + b)
            stream = StreamingEncoder(student)
            stream.append_ids(tokens[:prefix])
            static.load(b, stream)
            streams.append(stream)
            ids.append(tokens)
        times: dict[str, list[float]] = {"append": [], "teacher_recompute": []}
        distance = 0.0
        for u in range(updates + 1):
            a, z = prefix + u * delta, prefix + (u + 1) * delta
            new = torch.stack([t[a:z] for t in ids])
            start = _clock(device)
            vectors = static.append(new)
            append_s = _clock(device) - start
            if u == 0:  # the warm-up: compare with the dynamic path once
                dynamic = append_batch(streams, list(new))
                distance = max(_cosine_distance(x, y) for x, y in zip(vectors, dynamic))
            pieces = [(torch.cat([t[:z], torch.tensor(closing, dtype=torch.long)]), None) for t in ids]
            start = _clock(device)
            run_backbone(teacher.backbone, pieces, causal=False)
            teacher_s = _clock(device) - start
            if u == 0:
                continue
            times["append"].append(1e3 * append_s)
            times["teacher_recompute"].append(1e3 * teacher_s)
    append_ms, teacher_ms = (float(np.median(v)) for v in times.values())
    return {"batch": batch, "prefix": prefix, "delta": delta, "updates": updates, "graphs": static.graphs,
            "step_tokens": step, "capacity": capacity, "latency_ms": {"append": append_ms, "teacher_recompute": teacher_ms},
            "latency_ms_all": times,
            "speedups_vs_teacher": [t / a for a, t in zip(times["append"], times["teacher_recompute"])],
            "speedup_vs_teacher": teacher_ms / append_ms, "streams_per_s": batch / (append_ms / 1e3),
            "token_ratio_limit": (prefix + delta) / delta, "max_cosine_distance": distance,
            "cache_mb_per_stream": sum(t[0].numel() * t.element_size() for t in static.keys + static.values) / 2**20,
            "device": str(device), "precision": str(student.dtype).removeprefix("torch.")}


# =============================================================================================
# streams as users have them: many at once, bounded memory, real conversations
# =============================================================================================


def many_streams_benchmark(student: Encoder, batch_sizes: Sequence[int] = (1, 2, 4, 8, 16), *, delta: int = 64,
                           lengths: tuple[int, int] = (256, 4096), rounds: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Streams served per second when the appends of several streams go through one forward
    (:func:`append_batch`) against the same appends one stream at a time.

    ``max(batch_sizes)`` streams of seeded random lengths in ``lengths`` are built once; for each
    batch size the first ``b`` of them each append ``delta`` tokens, ``rounds`` times (every round
    from the same states, rolled back untimed), one at a time and batched, interleaved. Per batch
    size: streams per second both ways (from the median round), the speed-up, the cache memory per
    stream (allocated), and the largest cosine distance between a batched and a single append.
    """
    vocab = int(student.backbone.config.vocab_size)
    generator = torch.Generator().manual_seed(seed)
    n = max(batch_sizes)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=generator).tolist()
    streams, states, pieces = [], [], []
    with torch.inference_mode():
        for i, size in enumerate(sizes):
            stream = StreamingEncoder(student)
            stream.append_ids(_token_stream(size, vocab, seed + 1 + i))
            streams.append(stream)
            states.append(stream.state)
            pieces.append(_token_stream(delta, vocab, seed + 1000 + i))
        rows = []
        for b in batch_sizes:
            single, batched, distance = [], [], 0.0
            for _ in range(rounds):
                alone = []
                elapsed = 0.0
                for stream, state, piece in zip(streams[:b], states[:b], pieces[:b]):
                    stream.load_state(state)
                    start = time.perf_counter()
                    alone.append(stream.append_ids(piece))
                    elapsed += time.perf_counter() - start
                single.append(elapsed)
                for stream, state in zip(streams[:b], states[:b]):
                    stream.load_state(state)
                start = time.perf_counter()
                together = append_batch(streams[:b], pieces[:b])
                batched.append(time.perf_counter() - start)
                distance = max(distance, *(_cosine_distance(x, y) for x, y in zip(alone, together)))
            one, many = float(np.median(single)), float(np.median(batched))
            rows.append({"batch": b, "delta": delta, "streams_per_s_single": b / one, "streams_per_s_batched": b / many,
                         "speedup": one / many, "tokens_per_s_batched": b * delta / many,
                         "cache_mb_per_stream": float(np.mean([s.cache_bytes for s in streams[:b]])) / 2**20,
                         "mean_tokens_per_stream": float(np.mean([s.n_tokens for s in streams[:b]])),
                         "max_cosine_distance": distance})
    return rows


def turn_chunks(tokenizer, text: str, min_tokens: int = 128, limit: int | None = None) -> list[list[int]]:
    """A conversation's turns (its lines) as consecutive pieces of token ids, each of whole turns and
    at least ``min_tokens`` long (the last may be shorter), in all at most ``limit`` tokens (the
    last turn cut there). Each turn is tokenized on its own, with its newline."""
    turns = [line + "\n" for line in text.splitlines() if line.strip()]
    chunks, current, total = [], [], 0
    for ids in tokenizer(turns, add_special_tokens=False)["input_ids"] if turns else []:
        if limit is not None and total + len(ids) > limit:
            ids = ids[: limit - total]
        current += ids
        total += len(ids)
        if len(current) >= min_tokens or (limit is not None and total >= limit):
            chunks.append(current)
            current = []
        if limit is not None and total >= limit:
            break
    if current:
        chunks.append(current)
    return chunks


def _cut_at(chunks: list[list[int]], marks: Sequence[int]) -> list[tuple[list[int], int | None]]:
    """``chunks`` with a cut at each token count in ``marks``: ``[(piece, mark reached or None)]``."""
    out, total, pending = [], 0, sorted(set(int(m) for m in marks))
    for chunk in chunks:
        while chunk:
            nxt = next((m for m in pending if m > total), None)
            if nxt is not None and total + len(chunk) >= nxt:
                take, mark = nxt - total, nxt
            else:
                take, mark = len(chunk), None
            out.append((chunk[:take], mark))
            chunk, total = chunk[take:], total + take
    return out


def stream_corpus(encoder: Encoder, texts: Sequence[str], checkpoints: Sequence[int], *, window: int | None = None,
                  sink: int = 4, min_tokens: int = 128, batch: int = 16, precision: str = "float32",
                  progress: bool = False) -> dict[int, np.ndarray]:
    """Each text streamed in turn chunks (:func:`turn_chunks`), ``batch`` streams per forward
    (:func:`append_batch`), its embedding taken as it reaches each checkpoint (in tokens; a shorter
    text gives its whole-text embedding): ``{checkpoint: (len(texts), D)}``, from one pass.
    ``precision="bfloat16"`` runs under bf16 autocast, as ``Encoder.encode`` does."""
    from tqdm.auto import tqdm

    checkpoints = sorted(int(c) for c in checkpoints)
    limit = checkpoints[-1] if window is not None else min(checkpoints[-1], encoder.max_positions - len(
        encoder.template.tail) - len(encoder.template.head))
    plans = []
    for text in texts:
        chunks = turn_chunks(encoder.tokenizer, text, min_tokens, limit)
        if chunks and encoder.template.head:
            chunks[0] = list(encoder.template.head) + chunks[0]
        plans.append(_cut_at(chunks, checkpoints))
    out = {c: np.zeros((len(texts), encoder.embed_dim), dtype=np.float32) for c in checkpoints}
    queue, active = list(range(len(texts))), []  # active: [text index, stream, next piece]
    bar = tqdm(total=len(texts), desc=f"stream corpus (window {window})", unit="text", disable=not progress)
    autocast = torch.autocast(encoder.device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")
    with torch.inference_mode(), autocast:
        while queue or active:
            while queue and len(active) < batch:
                index = queue.pop(0)
                if plans[index]:
                    active.append([index, StreamingEncoder(encoder, window=window, sink=sink), 0])
                else:
                    bar.update()
            vectors = append_batch([a[1] for a in active], [plans[a[0]][a[2]][0] for a in active])
            still = []
            for entry, vector in zip(active, vectors):
                index, _, step = entry
                mark = plans[index][step][1]
                if mark is not None:
                    out[mark][index] = vector
                entry[2] += 1
                if entry[2] < len(plans[index]):
                    still.append(entry)
                else:  # the whole text is shorter than the later checkpoints: its whole-text vector
                    for c in checkpoints:
                        if c > (mark or 0) and not out[c][index].any():
                            out[c][index] = vector
                    bar.update()
            active = still
    bar.close()
    return out


def conversation_replay(student: Encoder, teacher: Encoder, echo_model: Encoder, text: str, *,
                        min_tokens: int = 128, points: int = 10, windows: Sequence[int] = (), sink: int = 4,
                        limit: int | None = None) -> list[dict[str, Any]]:
    """A real conversation streamed turn chunk by turn chunk (:func:`turn_chunks`) through the
    student, against recomputing it.

    Per chunk: the tokens so far and new, the append's milliseconds, the cache's size and the
    embedding's drift (cosine distance to the previous chunk's vector and to the final one). At
    ``points`` chunks spread over the conversation: the teacher's recompute and Echo's (where its
    doubled text fits the positions; otherwise NaN), each timed on the append's attention path;
    at the last of them also the student's own, and the cosine distance of the streamed vector to
    it. The
    conversation is read to its end or its first ``limit`` tokens; the exact stream stops earlier
    where the model's positions run out, while each of ``windows`` (a bounded stream; all of them
    in one batched forward) goes on, recording its cache size and, while the exact stream runs,
    its cosine distance to it.
    """
    closing = list(student.template.tail)
    exact_limit = min(limit or student.max_positions, student.max_positions - len(closing))
    exact_pieces = turn_chunks(student.tokenizer, text, min_tokens, exact_limit)
    pieces = turn_chunks(student.tokenizer, text, min_tokens, limit) if windows else exact_pieces
    exact = StreamingEncoder(student)
    bounded = [StreamingEncoder(student, window=w, sink=sink) for w in windows]
    n_exact = len(exact_pieces)
    # spread over the chunks of whole turns (a last chunk cut short by the positions is not timed)
    full = n_exact - (n_exact > 1 and len(exact_pieces[-1]) < min_tokens)
    timed = set(np.linspace(0, full - 1, min(points, full)).round().astype(int).tolist())
    device = student.device

    rows, vectors = [], []
    with torch.inference_mode():
        for i, piece in enumerate(pieces):
            row: dict[str, Any] = {"chunk": i + 1}
            if i < n_exact:
                start = _clock(device)
                vector = exact.append_ids(exact_pieces[i])
                row.update({"tokens": exact.n_tokens, "new_tokens": len(exact_pieces[i]),
                            "append_ms": 1e3 * (_clock(device) - start),
                            "cache_mb": exact.cache_bytes / 2**20,
                            "drift_previous": _cosine_distance(vector, vectors[-1]) if vectors else np.nan})
                vectors.append(vector)
                if i in timed:
                    ids = torch.tensor(exact.token_ids + closing)
                    if i == max(timed):  # the student's own recompute once: the streamed vector is its vector
                        start = _clock(device)
                        row["cosine_distance_recompute"] = _cosine_distance(vector, recompute(student, ids))
                        row["student_recompute_ms"] = 1e3 * (_clock(device) - start)
                    start = _clock(device)
                    recompute(teacher, ids)
                    row["teacher_recompute_ms"] = 1e3 * (_clock(device) - start)
                    echo_in, echo_pool = _echo_ids(echo_model, torch.tensor(exact.token_ids))
                    row["echo_recompute_ms"] = np.nan
                    if len(echo_in) <= echo_model.max_positions:
                        start = _clock(device)
                        recompute(echo_model, echo_in, echo_pool)
                        row["echo_recompute_ms"] = 1e3 * (_clock(device) - start)
            if bounded:
                outs = append_batch(bounded, [piece] * len(bounded))
                row["window_tokens"] = bounded[0].n_tokens
                for w, stream, out in zip(windows, bounded, outs):
                    row[f"cache_mb_window_{w}"] = stream.cache_bytes / 2**20
                    if i < n_exact and exact.n_tokens == stream.n_tokens:
                        row[f"distance_window_{w}"] = _cosine_distance(out, vector)
            rows.append(row)
    for row, vector in zip(rows, vectors):
        row["drift_final"] = _cosine_distance(vector, vectors[-1])
    return rows


def streamed_retrieval(encoder: Encoder, revision: str, profile: Profile, documents: Sequence[str], vectors: np.ndarray, *,
                       label: str, task: str = "QMSumRetrieval") -> float:
    """``task``'s main score (× 100, through ``mteb.evaluate``) when its documents are embedded as
    streamed (``vectors[i]`` is ``documents[i]``'s, e.g. from :func:`stream_corpus`) and its queries
    by ``encoder.encode`` at the profile's evaluation precision. ``label`` (what was streamed:
    tokens read, window) joins the revision, so each setting's result is cached apart."""
    from .evaluate import evaluate_model
    from .models import from_encoder

    queries = from_encoder(encoder, "C-streamed", f"{revision}-{label}", batch_size=profile.eval_batch_size,
                           precision=profile.eval_precision)
    lookup = {text: vector for text, vector in zip(documents, vectors)}

    def encode(texts: list[str], prompt_type: str | None = None) -> np.ndarray:
        if prompt_type == "document":
            return np.stack([lookup[t] for t in texts])
        return queries.encode(texts, prompt_type)

    model = replace(queries, encode=encode)
    return float(evaluate_model(model, [task], profile)["scores"][task])


# the profiler's operator names, grouped by what an update spends its time on
UPDATE_PARTS = {
    "attention (scaled dot product)": ("scaled_dot_product", "sdpa", "_efficient_attention", "flash", "bmm", "softmax"),
    "linear layers (matmul)": ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"),
    "KV cache (concatenate, copy)": ("aten::cat", "aten::copy_", "aten::index", "aten::slice"),
    "attention mask and positions": ("aten::masked_fill", "aten::where", "aten::arange", "aten::full", "aten::zeros",
                                     "aten::gt", "aten::eq"),
    "norms and activations": ("aten::rsqrt", "aten::pow", "aten::mean", "aten::silu", "aten::mul", "aten::add",
                              "aten::neg", "aten::cos", "aten::sin"),
}


def profile_update(encoder: Encoder, prefix: int = 4096, delta: int = 128, repeats: int = 5, seed: int = 0,
                   attention_paths: Sequence[str] = ("transformers", "direct")) -> dict[str, dict[str, float]]:
    """Where one KV-cache update's time goes, per attention path: ``{path: {part: ms}}``, self CPU
    time under PyTorch's profiler per group of operators (:data:`UPDATE_PARTS`, the rest as
    ``other``), the median over ``repeats`` updates from the same ``prefix``-token state. The paths
    take turns update by update, so a machine's load falls on each alike; ``"transformers"`` is
    transformers' path (``DynamicCache`` and a 4-D mask: the append before the direct path)."""
    from torch.profiler import ProfilerActivity, profile

    streams = {path: StreamingEncoder(encoder, attention_path=path) for path in attention_paths}
    ids = _token_stream(prefix + delta, int(encoder.backbone.config.vocab_size), seed)
    runs: dict[str, list[dict[str, float]]] = {path: [] for path in attention_paths}
    with torch.inference_mode():
        states = {}
        for path, stream in streams.items():
            stream.append_ids(ids[:prefix])
            states[path] = stream.state
            stream.append_ids(ids[prefix:])  # warm-up
        for _ in range(repeats):
            for path, stream in streams.items():
                stream.load_state(states[path])
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    stream.append_ids(ids[prefix:])
                parts: dict[str, float] = {}
                for event in prof.key_averages():
                    name = event.key.lower()
                    part = next((p for p, keys in UPDATE_PARTS.items() if any(k in name for k in keys)), "other")
                    parts[part] = parts.get(part, 0.0) + event.self_cpu_time_total / 1e3
                runs[path].append(parts)
    out = {}
    for path, per_update in runs.items():
        names = {name for parts in per_update for name in parts}
        medians = {name: float(np.median([parts.get(name, 0.0) for parts in per_update])) for name in names}
        out[path] = dict(sorted(medians.items(), key=lambda kv: -kv[1]))
    return out
