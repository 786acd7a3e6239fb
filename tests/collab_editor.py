"""A collaboration client that edits a notebook in the server's shared document, unsaved.

Run by tests on an interpreter that has jupyter-collaboration (pycrdt, jupyter_ydoc):
``python collab_editor.py BASE_URL TOKEN PATH TEXT``. It does what JupyterLab does when a user
types into the first cell: joins the notebook's collaboration room, syncs, replaces the first
cell's source and marks the shared state ``dirty``, then leaves without saving. It stands in
for the browser in the non-browser tests (tests/browser/test_before_stop_ui.py types for real).
"""

import asyncio
import json
import sys
from urllib.parse import quote

from jupyter_ydoc import YNotebook
from pycrdt import Doc, create_sync_message, create_update_message, handle_sync_message
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect


async def edit(base: str, token: str, path: str, text: str) -> None:
    """Replace the first cell's source of ``path`` in its shared document, unsaved."""
    headers = {"Authorization": "token " + token}
    answer = await AsyncHTTPClient().fetch(
        HTTPRequest(
            base + "api/collaboration/session/" + quote(path),
            method="PUT",
            headers=headers,
            body=json.dumps({"format": "json", "type": "notebook"}),
        )
    )
    session = json.loads(answer.body)
    url = "ws" + base[4:] + "api/collaboration/room/json:notebook:" + session["fileId"]
    conn = await websocket_connect(
        HTTPRequest(url + "?sessionId=" + session["sessionId"], headers=headers)
    )
    doc = Doc()
    conn.write_message(create_sync_message(doc), binary=True)
    while True:
        message = await asyncio.wait_for(conn.read_message(), 30)
        if message[0] != 0:
            continue
        reply = handle_sync_message(message[1:], doc)
        if reply is not None:
            conn.write_message(reply, binary=True)
        if message[1] == 1:  # SYNC_STEP2: the server's content is here
            break
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    notebook = YNotebook(doc)
    cell = notebook.ycells[0]
    cell["source"].clear()
    cell["source"].insert(0, text)
    notebook.dirty = True
    for update in updates:
        conn.write_message(create_update_message(update), binary=True)
    await asyncio.sleep(0.5)  # let the server apply them before the socket closes
    conn.close()


if __name__ == "__main__":
    asyncio.run(edit(*sys.argv[1:5]))
