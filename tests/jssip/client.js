// A JsSIP user agent (the SIP stack of WebRTC browser phones) on its default settings, run by
// tests/ws.rs. Node's standard WebSocket (--experimental-websocket on Node 20: the browsers'
// WHATWG API) stands in for the browser's. For wss, NODE_EXTRA_CA_CERTS trusts the test CA.
//
// node --experimental-websocket client.js URL USER PASSWORD DOMAIN
// Prints one line per event: registered, registrationFailed CAUSE, message FROM BODY, sent,
// sendFailed CAUSE, unregistered. Reads commands from stdin: `send TARGET TEXT`, `stop`.
'use strict';
const JsSIP = require('jssip');
const readline = require('readline');

const [url, user, password, domain] = process.argv.slice(2);
const ua = new JsSIP.UA({
  sockets: [new JsSIP.WebSocketInterface(url)],
  uri: `sip:${user}@${domain}`,
  password,
});
const say = (line) => process.stdout.write(line + '\n');
ua.on('registered', () => say('registered'));
ua.on('registrationFailed', (e) => say(`registrationFailed ${e.cause}`));
ua.on('unregistered', () => {
  say('unregistered');
  ua.stop();
  setTimeout(() => process.exit(0), 200);
});
ua.on('newMessage', (e) => {
  if (e.originator === 'remote') {
    say(`message ${e.request.from.uri.user} ${e.request.body}`);
  }
});
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const [cmd, target, ...text] = line.trim().split(' ');
  if (cmd === 'send') {
    ua.sendMessage(target, text.join(' '), {
      eventHandlers: {
        succeeded: () => say('sent'),
        failed: (e) => say(`sendFailed ${e.cause}`),
      },
    });
  } else if (cmd === 'stop') {
    ua.unregister();
  }
});
ua.start();
