"""`edgesam demo`: a local web page to click, box and segment with a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

EXAMPLES = """
[b]Examples[/b]

  [dim]# published EdgeSAM-DyT weights, page on http://127.0.0.1:7680/[/dim]
  edgesam demo

  [dim]# your checkpoint, HQ model, open the browser, any free port[/dim]
  edgesam demo --checkpoint edge_sam_dyt_hq.pth --hq --port 0 --open

  [dim]# an exported ONNX pair (the decoder is found next to the encoder)[/dim]
  edgesam demo --checkpoint export/edge_sam_dyt_encoder.onnx

  [dim]# your fine-tuned weights with their task prompts: a Task menu segments a class with no click[/dim]
  edgesam demo --checkpoint ft/edge_sam_dyt_finetuned.pth --tasks ft/tasks.pt

  [dim]# the model in the browser: serve a site built by 'edgesam export-web' (WASM threads enabled)[/dim]
  edgesam demo --client-side site

""" + (
    "Upload an image (encoded once), then left-click for a foreground point, right-click or Shift+click for "
    "a background point, drag for a box; every prompt runs only the mask decoder. The page shows the mask "
    "and its stability score, cycles multimask candidates, toggles HQ vs SAM masks (HQ checkpoints), runs "
    "'Everything' (every backend) and downloads the mask as PNG or JSON (COCO RLE). The server "
    "listens on 127.0.0.1 only unless --host says otherwise; it has no authentication.\n"
)


def command(
    checkpoint: Annotated[Path | None, typer.Option(
        "--checkpoint", dir_okay=False,
        help="Weights (.pth/.pt) or an exported model (.onnx, .tflite, .engine); default: the published "
        "weights of --model.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model variant, e.g. edge_sam_dyt, edge_sam_dyt_hq; default: recognised from --checkpoint, "
        "else edge_sam_dyt (edge_sam_dyt_hq with --hq).")] = None,
    hq: Annotated[bool, typer.Option("--hq", help="Use the HQ model (implies --model edge_sam_dyt_hq).")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or mps.")] = "cpu",
    host: Annotated[str, typer.Option(
        "--host", help="Address to listen on. Anything but loopback exposes the demo to your network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port; 0 picks a free one.")] = 7680,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", help="Largest accepted upload in MB.")] = 20.0,
    max_megapixels: Annotated[float, typer.Option(
        "--max-megapixels", help="Largest accepted image (width x height) in megapixels.")] = 16.8,
    open_browser: Annotated[bool, typer.Option(
        "--open/--no-open", help="Open the page in the default web browser.")] = False,
    log_requests: Annotated[bool, typer.Option("--log-requests", help="Print one line per HTTP request.")] = False,
    tasks: Annotated[Path | None, typer.Option(
        "--tasks", exists=True, dir_okay=False,
        help="Tasks file of 'edgesam finetune --train prompt': the page gets a Task menu (segment with no click).")
    ] = None,
    client_side: Annotated[Path | None, typer.Option(
        "--client-side", exists=True, file_okay=False,
        help="Serve a site built by 'edgesam export-web': the model runs in the browser (encoder and decoder), "
             "this only sends files, with the headers that enable WASM threads.")] = None,
) -> None:
    """Serve a local web page to segment images interactively (points, boxes, everything)."""
    from edgesam_cli.console import RichProgress, err_console
    from edgesam_core.demo.launch import check_port, open_session, plan_demo
    from edgesam_core.demo.server import is_loopback, serve
    from edgesam_core.demo.session import DemoLimits
    from edgesam_core.errors import ConfigError

    check_port(port)
    import math

    for name, value in (("--max-upload-mb", max_upload_mb), ("--max-megapixels", max_megapixels)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be positive, got {value:g}")
    if not is_loopback(host):
        err_console.print(f"[yellow]Warning:[/yellow] listening on {host}: anyone who can reach this machine can "
                          "use the demo (no authentication). Use --host 127.0.0.1 to keep it local.",
                          highlight=False)
    log = (lambda line: err_console.print(line, highlight=False, markup=False)) if log_requests else None
    if client_side is not None:
        from edgesam_core.demo.site_server import serve_site

        if checkpoint is not None or model is not None or hq or tasks is not None:
            raise ConfigError("--client-side serves a built site, whose model is fixed: drop --checkpoint/--model/"
                              "--hq (build another site with 'edgesam export-web' to change the model)")
        _run(serve_site(client_side, host=host, port=port, log=log), open_browser,
             f"EdgeSAM in the browser ({client_side})")
        return
    plan = plan_demo(checkpoint, model=model, hq=hq, device=device)
    limits = DemoLimits(max_upload_bytes=int(max_upload_mb * 1_000_000), max_pixels=int(max_megapixels * 1_000_000))
    if plan.checkpoint is None:
        with RichProgress(transfer=True) as download:
            session = open_session(plan, limits, download, tasks=tasks)
    else:
        session = open_session(plan, limits, tasks=tasks)
    _run(serve(session, host=host, port=port, log=log), open_browser, f"EdgeSAM demo ({session.model_name})")


def _run(server: Any, open_browser: bool, title: str) -> None:
    """Print where the page is, open it if asked and serve until Ctrl+C."""
    import webbrowser

    from edgesam_cli.console import err_console, out_console

    try:
        out_console.print(f"{title} on {server.url}  (Ctrl+C to stop)", highlight=False, soft_wrap=True)
        if open_browser:
            webbrowser.open(server.url)
        server.wait()
    except KeyboardInterrupt:
        err_console.print("Stopped.")
    finally:
        server.shutdown()


command.__doc__ = (command.__doc__ or "") + "\n" + EXAMPLES
