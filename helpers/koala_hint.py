"""koala helper hints for Python: tell koala which request a thread works for.

    import koala_hint
    koala_hint.delegate(request_id)   # before each send made for that request
    koala_hint.shutdown()             # this thread's request is complete

Hints are UDP datagrams to 127.127.127.127:127. With libkoala.so loaded they
are consumed by the library; without it they go to an address nobody listens
on, so an instrumented service runs unchanged where koala is absent. The
number travels in the datagram's body (sendto flags stay 0: passing it as
flags, like the original koala did, fails with EOPNOTSUPP without koala).
No dependencies; thread-safe; never raises.
"""

import socket
import threading

ADDRESS = ("127.127.127.127", 127)
DELEGATE = b"to-koala!set-delegated-from-thread-id\n"
SHUTDOWN = b"to-koala!thread-shutdown\n"

_socket = None
_lock = threading.Lock()


def _send(payload):
    global _socket
    try:
        if _socket is None:
            with _lock:
                if _socket is None:
                    _socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _socket.sendto(payload, ADDRESS)
    except OSError:
        pass  # a hint must never break the service


def delegate(virtual_id):
    """From now on, this thread's sends belong to request `virtual_id` (an int > 0;
    0 means: this thread works for itself again). Use one id per request."""
    _send(DELEGATE + str(int(virtual_id)).encode())


def shutdown(virtual_id=None):
    """End and record the current request now: this thread's, or `virtual_id`'s.
    Use it for requests that get no response (one-way protocols)."""
    _send(SHUTDOWN + (b"" if virtual_id is None else str(int(virtual_id)).encode()))
