'use strict';
// koala helper hints for Node.js: tell koala which request a send belongs to.
//
//   const koalaHint = require('./koala_hint');   // at start-up
//   koalaHint.delegate(requestId);   // before each send made for that request
//   koalaHint.shutdown();            // the request is complete (one-way protocols)
//
// Hints are UDP datagrams to 127.127.127.127:127, consumed by libkoala.so;
// without it they go to an address nobody listens on. The socket is connected
// once at load: a send on a connected dgram socket leaves synchronously, before
// the request it marks, which an unconnected send (resolved on a later tick)
// would not. No dependencies; never throws.

const dgram = require('dgram');

const PORT = 127;
const HOST = '127.127.127.127';
const DELEGATE = 'to-koala!set-delegated-from-thread-id\n';
const SHUTDOWN = 'to-koala!thread-shutdown\n';

const socket = dgram.createSocket('udp4');
let connected = false;
socket.on('error', () => {});
socket.connect(PORT, HOST, () => {
  connected = true;
});
socket.unref(); // never keeps the process alive

function send(payload) {
  try {
    if (connected) {
      socket.send(payload);
    } else {
      // Only before the first tick after loading: best effort, asynchronous.
      const early = dgram.createSocket('udp4');
      early.on('error', () => {});
      early.send(payload, PORT, HOST, () => early.close());
    }
  } catch (_) {
    // a hint must never break the service
  }
}

/** From now on, sends belong to request `virtualId` (a positive integer; 0: none). */
function delegate(virtualId) {
  send(DELEGATE + String(Math.trunc(Number(virtualId))));
}

/** End and record the current request now (or that of `virtualId`). */
function shutdown(virtualId) {
  send(SHUTDOWN + (virtualId === undefined ? '' : String(Math.trunc(Number(virtualId)))));
}

module.exports = { delegate, shutdown, PORT, HOST };
