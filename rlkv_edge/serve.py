"""An OpenAI-compatible server (llama-cpp-python's) on the per-head KV runtime, for `rlkv-edge serve`.

The model is loaded once by `rlkv_edge.runtime.load` (with the sparsity / KV budget / cache types of
`chat`) and handed to llama-cpp-python's FastAPI app, instead of the server building its own Llama.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlkv_edge.errors import UsageError

SERVE_EXTRA = "pip install 'rlkv-edge[serve]'"


def create_app(llm: Any, *, alias: str | None = None, api_key: str | None = None) -> Any:
    """llama-cpp-python's FastAPI app serving an already loaded Llama (no second load)."""
    try:
        import llama_cpp.server.app as server_app
        from llama_cpp.server.model import LlamaProxy
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise UsageError(f"serve needs llama-cpp-python's server extras ({e.name} is missing): {SERVE_EXTRA}") from None

    name = alias or Path(llm.model_path).name

    class _Preloaded(LlamaProxy):
        """A LlamaProxy whose one model is the Llama we loaded."""

        def __init__(self, models: list[ModelSettings]) -> None:
            self._model_settings_dict = {name: models[0]}
            self._current_model = llm
            self._current_model_alias = name
            self._default_model_settings = models[0]
            self._default_model_alias = name

        def __call__(self, model: str | None = None) -> Any:
            return llm

    settings = ModelSettings(model=str(llm.model_path), model_alias=name, n_ctx=llm.n_ctx(), verbose=False)
    server = ServerSettings(api_key=api_key)
    # create_app builds its proxy through the module-level name LlamaProxy: swap ours in meanwhile.
    original = server_app.LlamaProxy
    setattr(server_app, "LlamaProxy", _Preloaded)  # noqa: B010
    try:
        return server_app.create_app(server_settings=server, model_settings=[settings])
    finally:
        setattr(server_app, "LlamaProxy", original)  # noqa: B010


def check_server_extras() -> None:
    """UsageError unless llama-cpp-python's server extras (uvicorn, fastapi) are installed."""
    try:
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(f"serve needs llama-cpp-python's server extras: {SERVE_EXTRA}") from None


def run_server(app: Any, host: str, port: int) -> None:
    """Serve `app` with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
