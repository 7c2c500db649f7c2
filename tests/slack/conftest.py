"""Fixtures of the Slack tests: the Slack Web API stand-in, settings pointing at it, and the actions endpoint
served by a real uvicorn on 127.0.0.1 (a free port), in the test's own event loop so Temporal calls work."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from temporalio.client import Client

from patchflow.config import Settings
from patchflow.service.slack import SlackActions
from patchflow.testing.slack_api import SlackApiStandIn
from tests.workflows.conftest import dev_env, make_fleet  # noqa: F401 - fixtures shared with the wave tests

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C0PATCHES"
GROUPS = {"S0OPS": ["U0BOB", "U0CAROL"], "S0EMPTY": []}


@pytest.fixture
def slack_api() -> Iterator[SlackApiStandIn]:
    with SlackApiStandIn(usergroups=GROUPS) as stand_in:
        yield stand_in


@pytest.fixture
def settings(tmp_path: Path, slack_api: SlackApiStandIn) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        slack_signing_secret=SIGNING_SECRET,
        slack_bot_token=slack_api.token,
        slack_api_url=slack_api.url,
        slack_channel=CHANNEL,
    )


@asynccontextmanager
async def serve_actions(
    settings: Settings, get_client: Callable[[], Awaitable[Client]], **options: Any
) -> AsyncIterator[tuple[str, SlackActions]]:
    """``POST /slack/actions`` on a real HTTP server; yields its base URL and the endpoint object."""
    actions = SlackActions(settings=settings, get_client=get_client, **options)
    app = FastAPI()
    app.include_router(actions.router())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, ws="none")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", actions
        await actions.drain()
    finally:
        server.should_exit = True
        await task
        sock.close()
