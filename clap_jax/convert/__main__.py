"""Convert weights between msclap (PyTorch) and clap_jax.

  python -m clap_jax.convert msclap-to-jax CLAP_weights_2023.pth ckpt/          # -> config.json + model.safetensors
  python -m clap_jax.convert jax-to-msclap ckpt/ exported.pth                   # + exported.safetensors twin
  python -m clap_jax.convert jax-to-msclap runs/demo/train exported.pth          # a training workdir's newest step
  python -m clap_jax.convert msclap-to-jax clapcap_weights_2023.pth cap/        # the captioner, both ways too
  python -m clap_jax.convert hf-gpt2 gpt2_dir/ ckpt_out/ [--base ckpt/]         # HF GPT-2 into the text tower

Nothing is deleted that clap_jax did not write: an existing destination is replaced only when it is an earlier
output of clap_jax (a checkpoint directory holding only its two files, an export it wrote) or with --overwrite,
and a checkpoint written into a directory with other files (--overwrite) leaves those files alone.
Exports carry the model config (architecture), so importing them needs no --n-head.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax

from clap_jax.convert.checkpoint import load_checkpoint, save_checkpoint
from clap_jax.convert import formats
from clap_jax.convert.formats import load_weights
from clap_jax.convert.hf_gpt2 import load_hf_gpt2, with_text_tower
from clap_jax.convert.msclap import check_export_path, load_msclap_checkpoint, save_msclap
from clap_jax.errors import run_cli
from clap_jax.models import registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clap_jax.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("msclap-to-jax", help="msclap .pth/.safetensors -> clap_jax checkpoint directory")
    a.add_argument("src", help="msclap .pth or .safetensors file")
    a.add_argument("dst", help="checkpoint directory to write (new, empty, or an earlier clap_jax checkpoint)")
    a.add_argument("--n-head", type=int, default=None,
                   help="GPT-2 heads, for a file that does not store its architecture and is not msclap's 2023 "
                        "model (whose 12 heads are known)")
    b = sub.add_parser("jax-to-msclap", help="clap_jax checkpoint or training workdir -> msclap .pth (+ .safetensors)")
    b.add_argument("src", help="clap_jax checkpoint directory or training workdir")
    b.add_argument("dst", help="file to write (.pth, or .safetensors)")
    b.add_argument("--no-safetensors", action="store_true", help="do not write the .safetensors twin")
    c = sub.add_parser("hf-gpt2", help="put HF GPT-2 weights (dir with model.safetensors) into the text tower")
    c.add_argument("src", help="HF GPT-2 directory (model.safetensors or pytorch_model.bin, config.json)")
    c.add_argument("dst", help="checkpoint directory to write")
    c.add_argument("--base", default=None, help="checkpoint to start from (default: fresh msclap-2023 init)")
    for sp in (a, b, c):
        sp.add_argument("--overwrite", action="store_true",
                        help="write even where the destination exists and is not an earlier clap_jax output")
    args = p.parse_args(argv)

    if args.cmd == "msclap-to-jax":
        load = formats.for_file(args.src).load if os.path.isfile(args.src) else load_msclap_checkpoint
        variables, cfg = load(args.src, n_head=args.n_head)
        save_checkpoint(args.dst, variables, cfg, overwrite=args.overwrite)
        n = sum(int(x.size) for x in jax.tree.leaves(variables["params"]))
        print(f"wrote {args.dst} (clap_jax checkpoint, {n / 1e6:.1f} M params)")
    elif args.cmd == "jax-to-msclap":
        outs = [args.dst]
        if not args.no_safetensors and not args.dst.endswith(".safetensors"):
            outs.append(os.path.splitext(args.dst)[0] + ".safetensors")
        for out in outs:   # both destinations are checked before anything is read or written
            check_export_path(out, args.overwrite)
        variables, cfg = load_weights(args.src)
        save = formats.get("msclap-clapcap").save if cfg.get("family") == "msclap-clapcap" else save_msclap
        for out in outs:
            save(variables, cfg, out, overwrite=args.overwrite)
            print(f"wrote {out}")
    else:
        if args.base:
            variables, cfg = load_checkpoint(args.base)
        else:
            cfg = registry.model_config("msclap-2023")
            variables = jax.device_get(registry.init_variables(cfg, 0))
        gpt, _ = load_hf_gpt2(args.src, cfg.text)
        variables = dict(variables, params=with_text_tower(variables["params"], gpt))
        save_checkpoint(args.dst, variables, cfg, overwrite=args.overwrite)
        print(f"wrote {args.dst} (text tower from {args.src})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
