"""`synthvit app`: a Gradio page to try the fine-tuned model on your own image.

    synthvit app [--model models/finetune.pt | models:/NAME@ALIAS] [--host 127.0.0.1] [--port 7860]
                 [--max-upload-mb 10]

Upload an image: the page shows the image as the model sees it (decoded exactly as the
evaluate stage decodes test images), the top-5 classes with their confidences, and the
attention rollout over the image (ViTs). A file that is not an image gets a message;
uploads over --max-upload-mb are refused. The server listens on 127.0.0.1 unless told
otherwise, sends no analytics and makes no share link: it runs offline.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from synthvit.commands.predict import LoadedModel, add_model_argument, as_batch, decode, load_model
from synthvit.errors import UserError
from synthvit.evaluation import attention

TOP_K = 5
DISPLAY_SIZE = 224  # the model sees S x S pixels (e.g. 32); the page shows them enlarged


def megabytes(size: int) -> str:
    return f"{size / 2**20:.3g} MB"


def classify(loaded: LoadedModel, path: str | None, max_upload_bytes: int) -> dict:
    """{'message', 'top1', 'scores', 'image', 'overlay'}: what the page shows for an uploaded file path."""
    empty = {"message": "", "top1": "", "scores": None, "image": None, "overlay": None}
    if not path:
        return {**empty, "message": "Upload an image to classify it."}
    size = Path(path).stat().st_size
    if size > max_upload_bytes:
        return {**empty, "message": f"File too large: {megabytes(size)}; the limit is {megabytes(max_upload_bytes)}."}
    decoded = decode(Path(path), loaded.img_size)
    if isinstance(decoded, str):
        return {
            **empty,
            "message": f"Not an image this app can read ({Path(path).name}): upload a JPEG, PNG, "
            "BMP, GIF, TIFF or WebP file.",
        }
    images = as_batch([decoded])
    ranked = loaded.top_k(images, TOP_K, torch.device("cpu"), batch_size=1)[0]
    overlay, note = None, f" Attention overlay unavailable: {attention.why_unsupported(loaded.model)}."
    if attention.supports_attention(loaded.model):
        result = attention.compute_attention(loaded.model, images, loaded.mean, loaded.std)
        overlay = attention.overlay(decoded, result.rollout_map()[0].numpy(), alpha=0.5, size=DISPLAY_SIZE)
        note = ""
    best, confidence = ranked[0]
    return {
        "message": f"Classified as **{best}** with confidence {confidence:.1%}.{note}",
        "top1": f"{best} ({confidence:.2%})",
        "scores": dict(ranked),
        "image": attention.enlarge(decoded, DISPLAY_SIZE),
        "overlay": overlay,
    }


def import_gradio():
    """gradio is an optional extra (`pip install 'synthvit[app]'`): only this page needs it."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # the optional extra: imported only when the page is served
    except ImportError:
        raise UserError("synthvit app needs gradio, which is not installed: pip install 'synthvit[app]'") from None
    return gradio


def build_app(loaded: LoadedModel, max_upload_bytes: int):
    """The Gradio Blocks page."""
    gr = import_gradio()
    with gr.Blocks(title="synthvit demo", analytics_enabled=False) as demo:
        gr.Markdown(
            f"# synthvit demo\nModel: `{loaded.source}` ({loaded.name}, "
            f"{len(loaded.classes)} classes: {', '.join(loaded.classes[:12])}"
            f"{' ...' if len(loaded.classes) > 12 else ''}). "
            f"Images are resized (short side) and centre-cropped to {loaded.img_size} x {loaded.img_size} pixels.",
            elem_id="model-info",
        )
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image", file_count="single", type="filepath", elem_id="upload")
                status = gr.Markdown("Upload an image to classify it.", elem_id="status")
                top1 = gr.Textbox(label="Top-1", interactive=False, elem_id="top1")
            with gr.Column():
                scores = gr.Label(label=f"Top-{TOP_K}", num_top_classes=TOP_K, elem_id="scores")
        with gr.Row():
            # No share button: sharing uploads to a hub, and this page runs offline.
            seen, overlay = (
                gr.Image(label=label, type="numpy", interactive=False, elem_id=name, buttons=["download", "fullscreen"])
                for label, name in (("What the model sees", "seen"), ("Attention rollout", "overlay"))
            )

        def on_upload(path):
            out = classify(loaded, path, max_upload_bytes)
            return out["message"], out["top1"], out["scores"], out["image"], out["overlay"]

        upload.change(on_upload, inputs=upload, outputs=[status, top1, scores, seen, overlay])
    return demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10 MB)")


def run(args) -> int:
    if not 0 < args.max_upload_mb <= 1024:
        raise UserError(f"--max-upload-mb={args.max_upload_mb} is invalid: a size in MB in (0, 1024]")
    if not 0 < args.port < 65536:
        raise UserError(f"--port={args.port} is invalid: 1-65535")
    import_gradio()  # before loading a model for nothing
    max_bytes = int(args.max_upload_mb * 2**20)
    demo = build_app(load_model(args.model), max_bytes)
    print(f"synthvit app: serving {args.model} on http://{args.host}:{args.port}/", flush=True)
    try:
        demo.queue().launch(
            server_name=args.host,
            server_port=args.port,
            share=False,
            max_file_size=max_bytes,
            ssr_mode=False,
            show_error=True,
        )
    except OSError as exc:  # e.g. the port is taken
        reason = str(exc).split(". You can")[0]  # drop Gradio's advice about its own launch() arguments
        raise UserError(
            f"cannot serve on {args.host}:{args.port} ({reason}); is the port in use? pass another --port"
        ) from None
    return 0
