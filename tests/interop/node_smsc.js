// A minimal SMSC built on the npm package `smpp` (farhadi/node-smpp), an implementation
// gatewayd did not write. Usage: node node_smsc.js SYSTEM_ID PASSWORD
// Prints JSON lines on stdout: listening (port), bind, submit (decoded by node-smpp),
// deliver_resp; with NODE_SMSC_QUIET=1 only listening and bind (bench/kannel.py: a line a
// message would spend the SMSC's CPU). Answers submit_sm with a hex message_id and sends a
// delivery receipt whose text carries the id in decimal and whose TLV carries it in lower-case hex.
'use strict';
const smpp = require('smpp');

const [systemId, password] = process.argv.slice(2);
// NODE_SMSC_ID_BASE (e.g. 0xA0000000): ids from there, so that every one has a hex letter
// (bench/kannel.py: all-digit hex ids collide across bases with 1,000 in flight).
let counter = process.env.NODE_SMSC_ID_BASE ? Number(process.env.NODE_SMSC_ID_BASE) : 0x2A0;
const quiet = process.env.NODE_SMSC_QUIET === '1';
const out = (obj) => {
  if (quiet && obj.event !== 'listening' && obj.event !== 'bind') return;
  process.stdout.write(JSON.stringify(obj) + '\n');
};

function yymmddhhmm(d) {
  const p = (n) => String(n).padStart(2, '0');
  return p(d.getUTCFullYear() % 100) + p(d.getUTCMonth() + 1) + p(d.getUTCDate()) +
    p(d.getUTCHours()) + p(d.getUTCMinutes());
}

const server = smpp.createServer({ debug: false }, (session) => {
  session.on('error', () => {});
  const onBind = (pdu) => {
    const ok = pdu.system_id === systemId && pdu.password === password;
    out({ event: 'bind', command: pdu.command, ok });
    session.send(pdu.response({ command_status: ok ? 0 : smpp.ESME_RINVPASWD }));
  };
  session.on('bind_transceiver', onBind);
  session.on('bind_transmitter', onBind);
  session.on('bind_receiver', onBind);
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => {
    out({ event: 'unbind' });
    session.send(pdu.response());
    session.close();
  });
  session.on('deliver_sm_resp', (pdu) => {
    out({ event: 'deliver_resp', status: pdu.command_status });
  });
  session.on('submit_sm', (pdu) => {
    counter += 1;
    const hexId = counter.toString(16).toUpperCase().padStart(10, '0');
    const sm = pdu.short_message || {};
    const payload = pdu.message_payload && pdu.message_payload.message;
    out({
      event: 'submit',
      source: pdu.source_addr,
      destination: pdu.destination_addr,
      esm_class: pdu.esm_class,
      data_coding: pdu.data_coding,
      registered_delivery: pdu.registered_delivery,
      udh: (sm.udh || []).map((b) => Array.from(b)),
      message: typeof sm.message === 'string' ? sm.message : '',
      payload: typeof payload === 'string' ? payload : null,
      message_id: hexId,
    });
    session.send(pdu.response({ message_id: hexId }));
    if (!pdu.registered_delivery) return;
    setTimeout(() => {
      const now = new Date();
      const text = `id:${parseInt(hexId, 16)} sub:001 dlvrd:001 submit date:${yymmddhhmm(now)} ` +
        `done date:${yymmddhhmm(now)} stat:DELIVRD err:000 text:`;
      session.deliver_sm({
        source_addr: pdu.destination_addr,
        destination_addr: pdu.source_addr,
        esm_class: 4,
        short_message: text,
        receipted_message_id: hexId.toLowerCase(),
        message_state: 2,
      });
    }, 20);
  });
});

server.listen(0, '127.0.0.1', () => {
  out({ event: 'listening', port: server.address().port });
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
