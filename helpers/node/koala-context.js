'use strict';
// koala automatic request context for Node: no change to the service.
//
// Loaded with `node --require .../koala-context.js` (`koala record` and
// `koala replay` put it in NODE_OPTIONS). Under libkoala.so it gives each
// request an http/https server handles a context of its own
// (AsyncLocalStorage: it follows the request through callbacks, promises,
// timers and the client libraries' queues), and right before a socket
// write whose context differs from the previous write's (the context the
// bytes were written in, which a corked or busy socket may send later),
// tells the library which request the write is for: a `set-delegated-from-thread-id`
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
  function tell(id) {
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

  // A socket write can leave later than `socket.write()` was called (the
  // socket corked, or busy with an earlier write), and carry the chunks of
  // several writes at once: node-redis corks its socket for a tick, so the
  // commands of two requests that reach it in the same tick leave in one
  // writev. So each chunk carries the context it was written in, on its
  // write callback (which the stream keeps with the chunk), and a writev
  // whose chunks belong to different requests is sent as one write per
  // run of chunks of one request, in order, each after its hint: the
  // bytes on the wire are the same, and each goes to its own session.
  const CONTEXT = Symbol('koala request context');

  function tagged(callback) {
    const id = storage.getStore() || 0;
    const tag =
      typeof callback === 'function'
        ? function koalaWritten(...args) {
            return callback.apply(this, args);
          }
        : function koalaWritten() {};
    tag[CONTEXT] = id;
    return tag;
  }

  function contextOf(callback) {
    if (typeof callback === 'function' && callback[CONTEXT] !== undefined) {
      return callback[CONTEXT];
    }
    return storage.getStore() || 0; // a chunk written around the wrapper
  }

  // Runs of consecutive chunks of one context: [{ id, chunks }].
  function runs(entries) {
    const out = [];
    for (const entry of entries) {
      const id = contextOf(entry && entry.callback);
      const last = out[out.length - 1];
      if (last && last.id === id) {
        last.chunks.push(entry);
      } else {
        out.push({ id, chunks: [entry] });
      }
    }
    return out;
  }

  const socketWrite = net.Socket.prototype.write;
  net.Socket.prototype.write = function koalaWrite(chunk, encoding, callback) {
    if (typeof encoding === 'function') {
      return socketWrite.call(this, chunk, tagged(encoding));
    }
    return socketWrite.call(this, chunk, encoding, tagged(callback));
  };

  const writeGeneric = net.Socket.prototype._writeGeneric;
  if (typeof writeGeneric === 'function') {
    net.Socket.prototype._writeGeneric = function koalaWriteGeneric(writev, data, encoding, cb) {
      let split = null;
      try {
        if (writev && Array.isArray(data) && data.length > 0) {
          // Usually one request's chunks (a response's head and body):
          // one hint, nothing allocated.
          const first = contextOf(data[0] && data[0].callback);
          if (data.every((entry) => contextOf(entry && entry.callback) === first)) {
            tell(first);
          } else if (!handWritten) {
            split = runs(data);
          }
        } else {
          // One chunk: the stream keeps its callback while it is written.
          const state = this._writableState;
          tell(contextOf(state && state.writecb));
        }
      } catch (_) {
        split = null; // a hint must never break the service
      }
      if (split === null) {
        return writeGeneric.call(this, writev, data, encoding, cb);
      }
      // Each run after the one before it has been written.
      const socket = this;
      let next = 0;
      const writeNext = (error) => {
        if (error || next === split.length) {
          cb(error);
          return;
        }
        const group = split[next];
        next += 1;
        group.chunks.allBuffers = data.allBuffers;
        tell(group.id);
        writeGeneric.call(socket, true, group.chunks, encoding, writeNext);
      };
      return writeNext(null);
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
