'use strict';
// koala automatic request context for Node: no change to the service.
//
// Loaded with `node --require .../koala-context.js` (`koala record` and
// `koala replay` put it in NODE_OPTIONS). Under libkoala.so it gives each
// request an http/https server handles a context of its own
// (AsyncLocalStorage: it follows the request through callbacks, promises,
// timers and the client libraries' queues), and right before a socket
// write whose context differs from the previous write's, tells the
// library which request the write is for: a `set-delegated-from-thread-id`
// hint (docs/helper-hints.md) on a connected UDP socket, which leaves
// synchronously, before the write. So a write costs one comparison, plus
// one datagram (consumed by the library, never sent) when the event loop
// switched requests. The library ties a context to a request when it
// writes the response, and moves the calls it made before into that
// session. Writes outside any request context are the thread's own (0).
//
// A service that sends hints of its own keeps them: once it sent one,
// this helper stays silent. Without KOALA_MODE in the environment (the
// library is not active) it does nothing at all: no socket, no patch.
// Never throws into the service.

(function start() {
  if (!process.env.KOALA_MODE) {
    return;
  }
  let AsyncLocalStorage;
  let dgram;
  let http;
  let https;
  let net;
  try {
    ({ AsyncLocalStorage } = require('async_hooks'));
    dgram = require('dgram');
    http = require('http');
    https = require('https');
    net = require('net');
  } catch (_) {
    return;
  }

  const PORT = 127;
  const HOST = '127.127.127.127';
  const DELEGATE = 'to-koala!set-delegated-from-thread-id\n';
  // Context ids stay clear of the small numbers hand-written hints use;
  // a double holds integers exactly up to 2^53.
  const FIRST_ID = 2 ** 48;

  const storage = new AsyncLocalStorage();
  let nextId = FIRST_ID;
  let current = 0; // the context the library was last told about
  let connected = false;

  const hints = dgram.createSocket('udp4');
  hints.on('error', () => {});
  hints.connect(PORT, HOST, () => {
    connected = true;
  });
  hints.unref(); // never keeps the process alive

  // A service that sends hints of its own (helpers/koala_hint.js) keeps
  // them: from its first one on, this helper says nothing more.
  let handWritten = false;
  const dgramSend = dgram.Socket.prototype.send;
  dgram.Socket.prototype.send = function koalaSend(message, ...args) {
    if (this !== hints && !handWritten) {
      try {
        let head = '';
        if (typeof message === 'string') {
          head = message.slice(0, 9);
        } else if (Buffer.isBuffer(message)) {
          head = message.toString('latin1', 0, 9);
        }
        handWritten = head === 'to-koala!';
      } catch (_) {
        // not ours to judge
      }
    }
    return dgramSend.call(this, message, ...args);
  };

  // Before each write: tell the library when the context changed. Until
  // the hint socket is connected (the first tick) nothing is said.
  function beforeWrite() {
    const id = storage.getStore() || 0;
    if (id === current || !connected || handWritten) {
      return;
    }
    try {
      hints.send(DELEGATE + String(id));
      current = id;
    } catch (_) {
      // a hint must never break the service
    }
  }

  const writeGeneric = net.Socket.prototype._writeGeneric;
  if (typeof writeGeneric === 'function') {
    net.Socket.prototype._writeGeneric = function koalaWriteGeneric(...args) {
      beforeWrite();
      return writeGeneric.apply(this, args);
    };
  }

  // Each request an HTTP server emits runs in a new context.
  function wrapServer(Server) {
    if (!Server || !Server.prototype) {
      return;
    }
    const emit = Server.prototype.emit;
    Server.prototype.emit = function koalaEmit(event, ...args) {
      if (event !== 'request') {
        return emit.call(this, event, ...args);
      }
      const id = nextId;
      nextId += 1;
      return storage.run(id, () => emit.call(this, event, ...args));
    };
  }
  wrapServer(http.Server);
  if (https.Server !== http.Server) {
    wrapServer(https.Server);
  }
})();
