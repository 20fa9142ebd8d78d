"""``llm-int8 quantize``: convert a checkpoint to an int8 checkpoint on disk (streaming, atomic)."""

from __future__ import annotations

from ._args import add_int8_options

__all__ = ["register"]


def _shard_size(text: str) -> str:
    import argparse

    from transformers.utils.hub import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size such as 500MB or 2GB: {text!r}") from None
    if size <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive size, got {text!r}")
    return text


def _tokenizer_or_none(source: str):
    """The source's tokenizer, saved next to the int8 weights so the folder is self-contained."""
    import logging

    from ..integrations import load_tokenizer

    try:
        return load_tokenizer(source)
    except (OSError, ValueError, TypeError) as err:
        logging.getLogger(__name__).warning(
            "no tokenizer saved: %s (the int8 folder still loads; give `llm-int8 generate` one with --tokenizer)", err
        )
        return None


def _calibrated(args):
    """The float model in memory, its outlier dims calibrated, then converted with them in float."""
    import torch

    from ..analysis import CALIBRATION_TEXT, calibrate_outlier_dims, calibration_ids
    from ..config import DEFAULT_ACTIVATION, DEFAULT_SKIP_MODULES, DEFAULT_THRESHOLD
    from ..evaluation import read_text
    from ..integrations import load_model, quantize_model

    text = read_text(args.calibration_text) if args.calibration_text else CALIBRATION_TEXT
    dtype = getattr(torch, args.dtype) if args.dtype else torch.float32
    model, tokenizer = load_model(args.src, dtype=dtype)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    skip = (*DEFAULT_SKIP_MODULES, *(args.skip or ()))
    dims = calibrate_outlier_dims(
        model, calibration_ids(tokenizer, text), threshold or DEFAULT_THRESHOLD, skip_modules=skip
    )
    print(f"calibrated: {sum(map(len, dims.values()))} float dims in {len(dims)} layers")
    quantize_model(
        model, threshold, skip, activation=args.activation or DEFAULT_ACTIVATION, float_dims=dims, progress=True
    )
    return model, tokenizer


def _cmd_quantize(args) -> int:
    import sys
    from pathlib import Path

    from ..integrations import from_pretrained, linear_memory, save_bitsandbytes, save_pretrained

    out_dir = Path(args.out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not args.overwrite:
        # checked before the (long) load; the save checks again and writes atomically
        print(f"llm-int8 quantize: error: {out_dir} exists and is not empty (use --overwrite)", file=sys.stderr)
        return 2
    if args.calibrate and args.format == "bitsandbytes":
        print(
            "llm-int8 quantize: error: --calibrate keeps float columns, which --format bitsandbytes cannot hold",
            file=sys.stderr,
        )
        return 2
    if args.calibrate:
        model, tokenizer = _calibrated(args)
    else:
        model = from_pretrained(
            args.src,
            threshold=args.threshold,
            skip_modules=args.skip or None,
            dtype=args.dtype,
            activation=args.activation,
        )
        tokenizer = _tokenizer_or_none(args.src)
    save = save_bitsandbytes if args.format == "bitsandbytes" else save_pretrained
    out = save(model, args.out_dir, tokenizer=tokenizer, max_shard_size=args.max_shard_size, overwrite=args.overwrite)
    mem = linear_memory(model)
    qconfig = model.config.quantization_config
    on_disk = sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")
    print(
        f"wrote {out} ({args.format} format, {on_disk / 2**20:.1f} MiB of weights): "
        f"linear layers {mem['int8'] / 2**20:.1f} MiB int8 (scales included) + {mem['float'] / 2**20:.1f} MiB "
        f"float in {len(qconfig.modules_to_not_convert or [])} layers kept in float; "
        f"threshold {qconfig.threshold}, {qconfig.activation} activations"
    )
    return 0


def register(sub) -> None:
    q = sub.add_parser("quantize", help="write an int8 checkpoint of a model (streaming conversion)")
    q.add_argument("src", help="local HF directory, .gguf file, or hub id")
    q.add_argument("out_dir", help="folder to create (written atomically)")
    add_int8_options(q, from_checkpoint=True)
    q.add_argument(
        "--skip", nargs="+", metavar="NAME", help="extra layers kept in float, added to lm_head / tied embeddings"
    )
    q.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="dtype of the float parts")
    q.add_argument("--format", choices=("llm_int8", "bitsandbytes"), default="llm_int8")
    q.add_argument(
        "--calibrate",
        action="store_true",
        help="keep the outlier dims found on a calibration text in float, with their float weight columns "
        "(loads the float model in memory once; llm_int8 format only)",
    )
    q.add_argument("--calibration-text", metavar="FILE", help="text to calibrate on (default: a built-in English text)")
    q.add_argument("--max-shard-size", type=_shard_size, default="2GB", help="e.g. 500MB, 2GB (default 2GB)")
    q.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    q.set_defaults(func=_cmd_quantize)
