# What the root scripts of the image share (docker/egress, docker/url-sync):
# - metadata(): the machine's metadata, read through Fly's in-machine API
#   socket (/.fly/api, root's): what the provider set after create (an
#   egress policy, a rotated URL key) survives a stop there, where a file
#   written into the running machine does not;
# - write(): a file written whole or not at all, never through a link.
import json
import os
import socket

API_SOCKET = '/.fly/api'
API_TIMEOUT_S = 5
MAX_BYTES = 1 << 20


def metadata():
    """The metadata (a dict of strings), or None when the socket is not
    there or does not answer as it should."""
    app = os.environ.get('FLY_APP_NAME', '')
    mid = os.environ.get('FLY_MACHINE_ID', '')
    if not os.path.exists(API_SOCKET) or not app or not mid or '/' in app + mid:
        return None
    # a bare HTTP/1.0 request: http.client would double the boot's cost
    req = 'GET /v1/apps/%s/machines/%s/metadata HTTP/1.0\r\nHost: flaps\r\n\r\n' % (app, mid)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(API_TIMEOUT_S)
            s.connect(API_SOCKET)
            s.sendall(req.encode())
            data = b''
            while len(data) < MAX_BYTES:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b'\r\n\r\n')
        if head.split(b' ')[1:2] != [b'200']:
            return None
        meta = json.loads(body)
        return meta if isinstance(meta, dict) else None
    except (OSError, ValueError):
        return None


def write(path, data, mode):
    """path holds data (with mode) or is left as it was: a temporary file
    beside it, renamed over it; a link in the temporary's place is not
    followed."""
    tmp = path + '.new'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, 'w') as f:
        f.write(data)
    os.rename(tmp, path)
