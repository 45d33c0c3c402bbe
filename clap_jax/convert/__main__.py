"""Convert weights between msclap (PyTorch) and clap_jax.

  python -m clap_jax.convert msclap-to-jax CLAP_weights_2023.pth ckpt/          # -> config.json + model.safetensors
  python -m clap_jax.convert jax-to-msclap ckpt/ exported.pth                   # + exported.safetensors twin
  python -m clap_jax.convert jax-to-msclap runs/demo/train exported.pth          # a training workdir's newest step
  python -m clap_jax.convert msclap-to-jax clapcap_weights_2023.pth cap/        # the captioner, both ways too
  python -m clap_jax.convert hf-gpt2 gpt2_dir/ ckpt_out/ [--base ckpt/]         # HF GPT-2 into the text tower
  python -m clap_jax.convert hf-bert bert_dir/ ckpt_out/ [--base ckpt/]         # HF BERT into a 2022 text tower
  python -m clap_jax.convert laion-to-jax 630k-audioset-best.pt ckpt/           # laion_clap .pt -> clap_jax
  python -m clap_jax.convert jax-to-laion ckpt/ exported.pt                     # -> laion_clap .pt ('module.' keys)
  python -m clap_jax.convert hf-clap-to-jax clap-htsat-fused/ ckpt/             # HF transformers ClapModel dir
  python -m clap_jax.convert jax-to-hf-clap ckpt/ hf_out/                       # -> config.json + model.safetensors

Nothing is deleted that clap_jax did not write: an existing destination is replaced only when it is an earlier
output of clap_jax (a checkpoint directory holding only its two files, an export it wrote) or with --overwrite,
and a checkpoint written into a directory with other files (--overwrite) leaves those files alone.
Exports carry the model config (architecture), so importing them needs no --n-head.

Sources and destinations may be object-storage URLs (gs://bucket/..., s3://bucket/...): a training workdir there
is read in place, other sources are downloaded to a temporary directory first; outputs are written locally and
uploaded one file per put. An existing destination in a bucket is replaced only with --overwrite (or, for a
checkpoint directory, when it holds nothing but a checkpoint's two files).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile

import jax

from clap_jax.convert.checkpoint import load_checkpoint, save_checkpoint
from clap_jax.convert.formats import for_family, for_file, load_weights
from clap_jax.convert.formats import get as get_format
from clap_jax.convert.hf_gpt2 import load_hf_gpt2, with_text_tower
from clap_jax.convert.msclap import check_export_path
from clap_jax import files
from clap_jax.convert.checkpoint import CONFIG_FILE, VARIABLES_FILE
from clap_jax.convert.tree import CheckpointError
from clap_jax.errors import UserError, run_cli
from clap_jax.models import registry


@contextlib.contextmanager
def _output(dst: str, overwrite: bool, is_dir: bool):
    """A local path to write `dst` at: itself when local; for a URL a temporary one, uploaded on success."""
    if not files.is_url(dst):
        yield dst
        return
    if files.exists(dst) and not overwrite:
        names = set(files.listdir(dst)) if files.isdir(dst) else None
        if not (is_dir and names is not None and names <= {CONFIG_FILE, VARIABLES_FILE}):
            raise UserError(f"{dst}: exists and is not an earlier clap_jax checkpoint; pass --overwrite to replace "
                            f"it")
    tmp = tempfile.mkdtemp(prefix="clap_jax_convert_")
    try:
        local = os.path.join(tmp, files.basename(dst) or "out")
        yield local
        files.upload(local, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("msclap-to-jax", help="msclap .pth/.safetensors -> clap_jax checkpoint directory")
    a.add_argument("src", help="msclap .pth or .safetensors file")
    a.add_argument("dst", help="checkpoint directory to write (new, empty, or an earlier clap_jax checkpoint)")
    a.add_argument("--n-head", type=int, default=None,
                   help="GPT-2 (2023) / BERT (2022) heads, for a file that does not store its architecture and is not msclap's 2023 "
                        "model (whose 12 heads are known)")
    b = sub.add_parser("jax-to-msclap", help="clap_jax checkpoint or training workdir -> msclap .pth (+ .safetensors)")
    b.add_argument("src", help="clap_jax checkpoint directory or training workdir")
    b.add_argument("dst", help="file to write (.pth, or .safetensors)")
    b.add_argument("--no-safetensors", action="store_true", help="do not write the .safetensors twin")
    c = sub.add_parser("hf-gpt2", help="put HF GPT-2 weights (dir with model.safetensors) into the text tower")
    c.add_argument("src", help="HF GPT-2 directory (model.safetensors or pytorch_model.bin, config.json)")
    c.add_argument("dst", help="checkpoint directory to write")
    c.add_argument("--base", default=None, help="checkpoint to start from (default: fresh msclap-2023 init)")
    d = sub.add_parser("hf-bert", help="put HF BERT weights (bert-base-uncased layout) into a msclap-2022 text tower")
    d.add_argument("src", help="HF BERT directory (model.safetensors or pytorch_model.bin, config.json)")
    d.add_argument("dst", help="checkpoint directory to write")
    d.add_argument("--base", default=None, help="msclap-2022 weights to start from (default: fresh msclap-2022 "
                                                "init, text tower sized by the HF config.json)")
    e = sub.add_parser("laion-to-jax", help="laion_clap .pt -> clap_jax checkpoint directory")
    e.add_argument("src", help="laion_clap checkpoint (.pt/.pth/.bin; 'state_dict' with or without 'module.')")
    e.add_argument("dst", help="checkpoint directory to write")
    e.add_argument("--n-head", type=int, default=None,
                   help="RoBERTa heads for a file without a stored config (default hidden size / 64)")
    f = sub.add_parser("jax-to-laion", help="LAION-family clap_jax checkpoint or workdir -> laion_clap .pt")
    f.add_argument("src", help="clap_jax checkpoint directory or training workdir of a laion-clap model")
    f.add_argument("dst", help=".pt file to write")
    g = sub.add_parser("hf-clap-to-jax", help="HF transformers ClapModel directory -> clap_jax checkpoint")
    g.add_argument("src", help="directory with config.json + model.safetensors (or pytorch_model.bin)")
    g.add_argument("dst", help="checkpoint directory to write")
    h = sub.add_parser("jax-to-hf-clap", help="LAION-family clap_jax checkpoint or workdir -> HF ClapModel dir")
    h.add_argument("src", help="clap_jax checkpoint directory or training workdir of a laion-clap model")
    h.add_argument("dst", help="directory to write config.json + model.safetensors into")
    for sp in (a, b, c, d, e, f, g, h):
        sp.add_argument("--overwrite", action="store_true",
                        help="write even where the destination exists and is not an earlier clap_jax output")
    args = p.parse_args(argv)

    if args.cmd in _LAION_COMMANDS:
        return _LAION_COMMANDS[args.cmd](args)
    if args.cmd == "msclap-to-jax":
        # msclap 2023 or 2022, told by the file's content; anything else gets the msclap loader's own message
        with files.local_copy(args.src) as src:
            fmt = for_file(src) if os.path.isfile(src) else get_format("msclap")
            variables, cfg = fmt.load(src, None, n_head=args.n_head)
        with _output(args.dst, args.overwrite, is_dir=True) as dst:
            save_checkpoint(dst, variables, cfg, overwrite=args.overwrite)
        n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
        print(f"wrote {args.dst} (clap_jax checkpoint, {n / 1e6:.1f} M params)")
    elif args.cmd == "jax-to-msclap":
        outs = [args.dst]
        if not args.no_safetensors and not args.dst.endswith(".safetensors"):
            outs.append(os.path.splitext(args.dst)[0] + ".safetensors")
        for out in outs:   # both destinations are checked before anything is read or written
            if files.is_url(out):
                if files.exists(out) and not args.overwrite:
                    raise UserError(f"{out}: exists; pass --overwrite to replace it")
            else:
                check_export_path(out, args.overwrite)
        variables, cfg = load_weights(args.src)
        for out in outs:
            with _output(out, True, is_dir=False) as local:
                for_family(cfg.get("family", "msclap-2023")).save(variables, cfg, local, overwrite=args.overwrite)
            print(f"wrote {out}")
    elif args.cmd == "hf-bert":
        from clap_jax.convert.hf_bert import load_hf_bert, read_hf_bert, text_config_from_hf

        if args.base:
            variables, cfg = load_weights(args.base)
            if cfg.get("family") != "msclap-2022":
                raise CheckpointError(f"--base {args.base}: a {cfg.get('family')!r} model; HF BERT goes into the "
                                      f"text tower of a msclap-2022 model")
        with files.local_copy(args.src) as src:
            if not args.base:
                cfg = registry.model_config("msclap-2022")
                cfg.text = text_config_from_hf(read_hf_bert(src)[1], cfg.text)
                variables = jax.device_get(registry.init_variables(cfg, 0))
            base_text = variables["params"]["caption_encoder"]["base"]
            bert, _ = load_hf_bert(src, cfg.text, base_params=base_text)
        params = dict(variables["params"], caption_encoder=dict(variables["params"]["caption_encoder"], base=bert))
        with _output(args.dst, args.overwrite, is_dir=True) as dst:
            save_checkpoint(dst, dict(variables, params=params), cfg, overwrite=args.overwrite)
        print(f"wrote {args.dst} (text tower from {args.src})")
    else:
        if args.base:
            with files.local_copy(args.base) as base:
                variables, cfg = load_checkpoint(base)
        else:
            cfg = registry.model_config("msclap-2023")
            variables = jax.device_get(registry.init_variables(cfg, 0))
        with files.local_copy(args.src) as src:
            gpt, _ = load_hf_gpt2(src, cfg.text)
        variables = dict(variables, params=with_text_tower(variables["params"], gpt))
        with _output(args.dst, args.overwrite, is_dir=True) as dst:
            save_checkpoint(dst, variables, cfg, overwrite=args.overwrite)
        print(f"wrote {args.dst} (text tower from {args.src})")
    return 0


def _laion_model(src: str):
    variables, cfg = load_weights(src)
    if cfg.get("family") != "laion-clap":
        raise CheckpointError(f"{src}: a {cfg.get('family', 'msclap-2023')!r} model; laion_clap and HF ClapModel "
                              f"files hold laion-clap models only")
    return variables, cfg


def _laion_to_jax(args) -> int:
    from clap_jax.convert import hf_clap

    with files.local_copy(args.src) as src:
        if args.cmd == "hf-clap-to-jax":
            if not hf_clap.is_hf_clap_dir(src):
                raise CheckpointError(f"{args.src}: not a HF ClapModel directory (config.json of model_type 'clap' "
                                      f"and its weights)")
            variables, cfg = hf_clap.load_hf_clap(src)
        else:
            variables, cfg = get_format("laion-clap").load(src, None, n_head=args.n_head)
    with _output(args.dst, args.overwrite, is_dir=True) as dst:
        save_checkpoint(dst, variables, cfg, overwrite=args.overwrite)
    n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
    print(f"wrote {args.dst} (clap_jax checkpoint, {cfg.family}, {n / 1e6:.1f} M params)")
    return 0


def _jax_to_laion(args) -> int:
    if files.is_url(args.dst):
        if files.exists(args.dst) and not args.overwrite:
            raise UserError(f"{args.dst}: exists; pass --overwrite to replace it")
    elif os.path.isdir(args.dst):
        raise UserError(f"{args.dst}: is a directory; give the .pt file to write")
    variables, cfg = _laion_model(args.src)   # an existing file is refused by save_laion unless clap_jax wrote it
    with _output(args.dst, True, is_dir=False) as local:
        get_format("laion-clap").save(variables, cfg, local, overwrite=args.overwrite)
    print(f"wrote {args.dst}")
    return 0


def _jax_to_hf_clap(args) -> int:
    from clap_jax.convert import hf_clap

    ours = {"config.json", "model.safetensors"}
    if not files.is_url(args.dst) and os.path.isdir(args.dst) and not args.overwrite:
        extra = set(os.listdir(args.dst)) - ours
        if extra or (os.listdir(args.dst) and not hf_clap.is_hf_clap_dir(args.dst)):
            what = ", ".join(sorted(extra)) or "not a HF ClapModel"
            raise UserError(f"{args.dst}: a directory with other files ({what}); choose an empty or new "
                            f"directory, or pass --overwrite")
    elif not files.is_url(args.dst) and os.path.exists(args.dst):
        if not os.path.isdir(args.dst):
            raise UserError(f"{args.dst}: is a file; give a directory for the HF ClapModel")
    variables, cfg = _laion_model(args.src)
    with _output(args.dst, args.overwrite, is_dir=True) as dst:
        hf_clap.save_hf_clap(variables, cfg, dst)
    print(f"wrote {args.dst} (HF ClapModel: config.json + model.safetensors)")
    return 0


_LAION_COMMANDS = {"laion-to-jax": _laion_to_jax, "hf-clap-to-jax": _laion_to_jax, "jax-to-laion": _jax_to_laion,
                   "jax-to-hf-clap": _jax_to_hf_clap}


if __name__ == "__main__":
    sys.exit(run_cli(main))
