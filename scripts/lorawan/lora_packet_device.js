#!/usr/bin/env node
// An independent LoRaWAN end device and packet forwarder, for fleetward's end-to-end tests.
//
// Every LoRaWAN byte is made and checked by the npm package lora-packet (not by fleetward's
// code or its Rust dependencies); the Semtech UDP datagrams are written here from the protocol
// text. Scenario (argument: a JSON object):
//   {"server": "127.0.0.1:1700", "devices": [
//      {"kind": "otaa", "version": "1.0", "dev_eui", "join_eui", "app_key"},
//      {"kind": "otaa", "version": "1.1", "dev_eui", "join_eui", "app_key", "nwk_key"},
//      {"kind": "abp", "dev_addr", "nwk_s_key", "app_s_key", "fcnt"} ]}
// For each device: join over UDP (OTAA: join-accept received in PULL_RESP, decrypted, its MIC
// checked, session keys derived with lora-packet), then uplinks through three gateways
// (duplicates), a replay after the de-duplication window, a forged MIC, and (OTAA) the same
// DevNonce again; plus garbage datagrams. Prints one JSON report; exits non-zero if the server
// did something a device or gateway would not accept (no PUSH_ACK, no join-accept, bad MIC).
"use strict";
const dgram = require("dgram");
const lora = require("lora-packet");

if (process.argv[2] === "--vector") {
  // A LoRaWAN 1.1 known-answer vector made by lora-packet alone (fixed keys): an uplink with
  // encrypted FOpts, a 32-bit counter past 16 bits, and the two-key MIC with TxDr 3 / TxCh 5.
  const keys = {
    FNwkSIntKey: Buffer.from("724f16f6814c596b21f1c49f404ed133", "hex"),
    SNwkSIntKey: Buffer.from("5c008653d8476c4394d33598f3ced081", "hex"),
    NwkSEncKey: Buffer.from("c8ad5a6a1a206870da8c7cf4eeeb50ee", "hex"),
    AppSKey: Buffer.from("1753789709bd90c755b579bc0df17c71", "hex"),
  };
  const fcnt = 0x10005;
  const fopts = Buffer.from("020603ff10", "hex");
  const msb = Buffer.alloc(2);
  msb.writeUInt16LE(fcnt >>> 16);
  const pkt = require("lora-packet").fromFields(
    { MType: "Confirmed Data Up", DevAddr: Buffer.from("48000001", "hex"), FCnt: fcnt & 0xffff, FPort: 10,
      FOpts: fopts, payload: Buffer.from("fleetward 1.1") },
    keys.AppSKey, keys.FNwkSIntKey, undefined, msb);
  pkt.encryptFOpts(keys.NwkSEncKey, undefined, msb);
  require("lora-packet").recalculateMIC(pkt, keys.FNwkSIntKey, keys.SNwkSIntKey, msb, Buffer.from([0, 0, 3, 5]));
  process.stdout.write(JSON.stringify({
    keys: Object.fromEntries(Object.entries(keys).map(([k, v]) => [k, v.toString("hex")])),
    fcnt, tx_dr: 3, tx_ch: 5, f_opts_plain: fopts.toString("hex"), frm_payload_plain: "fleetward 1.1",
    phy_payload: pkt.getPHYPayload().toString("hex"),
  }) + "\n");
  process.exit(0);
}

const scenario = JSON.parse(process.argv[2]);
const [host, portText] = scenario.server.split(":");
const port = Number(portText);
const hex = (s) => Buffer.from(s, "hex");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(message) {
  process.stderr.write(`lora-packet device: ${message}\n`);
  process.exit(1);
}

// A gateway: an "up" socket (PUSH_DATA → PUSH_ACK) and a "down" socket (PULL_DATA → PULL_ACK,
// PULL_RESP → TX_ACK), protocol version 2.
class Gateway {
  constructor(eui) {
    this.eui = hex(eui);
    this.token = Math.floor(Math.random() * 0xffff);
    this.up = dgram.createSocket("udp4");
    this.down = dgram.createSocket("udp4");
    this.waiters = { up: [], down: [] };
    for (const side of ["up", "down"]) {
      this[side].on("message", (msg) => {
        const w = this.waiters[side];
        for (let i = 0; i < w.length; i++) {
          if (w[i].match(msg)) {
            const [hit] = w.splice(i, 1);
            clearTimeout(hit.timer);
            hit.resolve(msg);
            return;
          }
        }
      });
    }
  }

  async open() {
    await new Promise((r) => this.up.bind(0, "127.0.0.1", r));
    await new Promise((r) => this.down.bind(0, "127.0.0.1", r));
    const token = this.nextToken();
    const ack = this.wait("down", (m) => m[3] === 0x04 && m.readUInt16BE(1) === token, 5000, "PULL_ACK");
    this.down.send(this.header(token, 0x02), port, host);
    await ack;
  }

  nextToken() {
    this.token = (this.token + 1) & 0xffff;
    return this.token;
  }

  header(token, id) {
    const h = Buffer.alloc(12);
    h[0] = 2;
    h.writeUInt16BE(token, 1);
    h[3] = id;
    this.eui.copy(h, 4);
    return h;
  }

  wait(side, match, ms, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms);
      this.waiters[side].push({ match, resolve, timer });
    });
  }

  // PUSH_DATA with one rxpk; resolves when the server's PUSH_ACK for it arrives.
  async push(phy, radio = {}) {
    const token = this.nextToken();
    const rxpk = {
      tmst: radio.tmst ?? 2000000,
      chan: radio.chan ?? 0,
      rfch: 0,
      freq: radio.freq ?? 868.1,
      stat: 1,
      modu: "LORA",
      datr: radio.datr ?? "SF7BW125",
      codr: "4/5",
      rssi: radio.rssi ?? -60,
      lsnr: radio.lsnr ?? 7.5,
      size: phy.length,
      data: phy.toString("base64"),
    };
    const body = Buffer.from(JSON.stringify({ rxpk: [rxpk] }));
    const ack = this.wait("up", (m) => m[3] === 0x01 && m.readUInt16BE(1) === token, 5000, "PUSH_ACK");
    this.up.send(Buffer.concat([this.header(token, 0x00), body]), port, host);
    await ack;
  }

  // The next PULL_RESP; answered with TX_ACK.
  async pullResp(ms) {
    const msg = await this.wait("down", (m) => m[3] === 0x03, ms, "PULL_RESP");
    const txpk = JSON.parse(msg.subarray(4).toString()).txpk;
    const ack = Buffer.concat([this.header(msg.readUInt16BE(1), 0x05), Buffer.from('{"txpk_ack":{"error":"NONE"}}')]);
    this.down.send(ack, port, host);
    return txpk;
  }

  close() {
    this.up.close();
    this.down.close();
  }
}

function joinRequest(d, devNonce) {
  const nonce = Buffer.alloc(2);
  nonce.writeUInt16BE(devNonce);
  // The join-request MIC: AppKey (1.0.x) or NwkKey (1.1).
  const rootKey = d.version === "1.1" ? hex(d.nwk_key) : hex(d.app_key);
  return lora.fromFields(
    { MType: "Join Request", AppEUI: hex(d.join_eui), DevEUI: hex(d.dev_eui), DevNonce: nonce },
    undefined,
    undefined,
    rootKey,
  ).getPHYPayload();
}

// Decrypts and checks a join-accept, derives the session (all with lora-packet).
function openJoinAccept(d, phy, devNonce) {
  const v11 = d.version === "1.1";
  const encKey = v11 ? hex(d.nwk_key) : hex(d.app_key);
  const accept = lora.fromWire(lora.decryptJoinAccept(lora.fromWire(phy), encKey));
  if (!accept.isJoinAcceptMessage()) fail("PULL_RESP did not carry a join-accept");
  const nonce = Buffer.alloc(2);
  nonce.writeUInt16BE(devNonce);
  let micOk;
  if (v11) {
    if (!accept.getDLSettingsOptNeg()) fail("a 1.1 join-accept must set OptNeg");
    const { JSIntKey } = lora.generateJSKeys(hex(d.nwk_key), hex(d.dev_eui));
    accept.JoinEUI = hex(d.join_eui);
    accept.DevNonce = nonce;
    micOk = lora.verifyMIC(accept, JSIntKey);
  } else {
    micOk = lora.verifyMIC(accept, undefined, hex(d.app_key));
  }
  if (!micOk) fail(`join-accept MIC does not verify for ${d.dev_eui}`);
  const appNonce = accept.AppNonce; // JoinNonce, big-endian
  const session = v11
    ? lora.generateSessionKeys11(hex(d.app_key), hex(d.nwk_key), hex(d.join_eui), appNonce, nonce)
    : lora.generateSessionKeys10(hex(d.app_key), accept.NetID, appNonce, nonce);
  return {
    devAddr: accept.DevAddr,
    joinNonce: appNonce.readUIntBE(0, 3),
    session,
  };
}

// A data uplink made by lora-packet. 1.1: FOpts encrypted with NwkSEncKey, MIC over B0 (FNwkSIntKey)
// and B1 (SNwkSIntKey, with ConfFCnt | TxDr | TxCh).
function uplink(d, s, fcnt, payload, opts = {}) {
  const fields = {
    MType: "Unconfirmed Data Up",
    DevAddr: s.devAddr,
    FCtrl: { ADR: false, ACK: false, ADRACKReq: false, FPending: false },
    FCnt: fcnt & 0xffff,
    FPort: opts.fport ?? 2,
    payload: Buffer.from(payload),
  };
  if (opts.fopts) fields.FOpts = opts.fopts;
  const msb = Buffer.alloc(2);
  msb.writeUInt16LE(fcnt >>> 16);
  if (d.version === "1.1") {
    const k = s.session;
    const pkt = lora.fromFields(fields, k.AppSKey, k.FNwkSIntKey, undefined, msb);
    if (opts.fopts) pkt.encryptFOpts(k.NwkSEncKey, undefined, msb);
    const txDrCh = Buffer.from([0, 0, opts.txDr ?? 5, opts.txCh ?? 0]);
    lora.recalculateMIC(pkt, k.FNwkSIntKey, opts.wrongKey ?? k.SNwkSIntKey, msb, txDrCh);
    return pkt.getPHYPayload();
  }
  const nwk = opts.wrongKey ?? s.session.NwkSKey;
  return lora.fromFields(fields, s.session.AppSKey, nwk, undefined, msb).getPHYPayload();
}

async function main() {
  const gateways = [new Gateway("aa555a0000000001"), new Gateway("aa555a0000000002"), new Gateway("aa555a0000000003")];
  for (const g of gateways) await g.open();
  const [gw1, gw2, gw3] = gateways;
  const report = { devices: [] };
  for (const d of scenario.devices) {
    const r = { dev_eui: d.dev_eui, kind: d.kind, version: d.version };
    let s;
    let fcnt = 0;
    if (d.kind === "otaa") {
      const devNonce = d.dev_nonce ?? 7;
      const downlink = gw1.pullResp(10000);
      await gw1.push(joinRequest(d, devNonce), { tmst: 1000000 });
      const txpk = await downlink;
      if (txpk.tmst !== 6000000) fail(`join-accept timed at ${txpk.tmst}, expected RX1 (tmst + 5 s)`);
      if (txpk.ipol !== true) fail("a downlink must use inverted polarity");
      s = openJoinAccept(d, Buffer.from(txpk.data, "base64"), devNonce);
      r.dev_addr = s.devAddr.toString("hex").toUpperCase();
      r.join_nonce = s.joinNonce;
      r.join_accept_mic = "ok";
      // The same join-request later (after the de-duplication window) reuses its DevNonce.
      r.replayJoin = joinRequest(d, devNonce);
    } else {
      s = { devAddr: hex(d.dev_addr), session: { NwkSKey: hex(d.nwk_s_key), AppSKey: hex(d.app_s_key) } };
      fcnt = d.fcnt;
    }
    // An uplink heard by three gateways.
    const first = uplink(d, s, fcnt, `hello from ${d.dev_eui}`, { fopts: d.version === "1.1" ? Buffer.from([0x02]) : undefined });
    await Promise.all([gw1.push(first, { rssi: -42 }), gw2.push(first, { rssi: -87 }), gw3.push(first, { rssi: -113 })]);
    fcnt += 1;
    // 1.1 on another channel and data rate (EU868: 867.5 MHz is channel 5, SF9BW125 is DR3).
    const second =
      d.version === "1.1"
        ? uplink(d, s, fcnt, "second", { txDr: 3, txCh: 5 })
        : uplink(d, s, fcnt, "second");
    await gw1.push(second, d.version === "1.1" ? { freq: 867.5, datr: "SF9BW125" } : {});
    fcnt += 1;
    // Replay of the second frame, after the de-duplication window.
    await sleep(300);
    await gw2.push(second, d.version === "1.1" ? { freq: 867.5, datr: "SF9BW125" } : {});
    // A forged frame (MIC with a wrong key).
    await gw1.push(uplink(d, s, fcnt, "forged", { wrongKey: Buffer.alloc(16, 0x5a) }));
    // A counter past the gap.
    await gw1.push(uplink(d, s, fcnt + 40000, "far"));
    // The next genuine frame (the forgery did not consume the counter on the server).
    await gw1.push(uplink(d, s, fcnt, "third"));
    fcnt += 1;
    if (r.replayJoin) {
      await gw1.push(r.replayJoin);
      delete r.replayJoin;
    }
    r.last_fcnt = fcnt - 1;
    report.devices.push(r);
  }
  // Garbage: a PUSH_DATA that is not JSON, an unknown identifier, a truncated header.
  const junk = [
    Buffer.concat([gw1.header(1, 0x00), Buffer.from("{not json")]),
    Buffer.from([2, 0, 1, 0x09]),
    Buffer.from([2, 0]),
  ];
  for (const j of junk) gw1.up.send(j, port, host);
  await sleep(100);
  for (const g of gateways) g.close();
  process.stdout.write(JSON.stringify(report) + "\n");
}

main().catch((e) => fail(e.stack || String(e)));
