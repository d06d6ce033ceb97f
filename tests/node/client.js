// A recstack client in Node.js, built from protos/ alone (no generated code, no Python):
// @grpc/proto-loader reads protos/recstack/v1/*.proto, the channel uses the shipped
// service config (protos/recstack/v1/service_config.json), and failed calls are decoded
// as google.rpc.Status from the grpc-status-details-bin trailer with protobufjs.
//
// It calls every RPC of RecommendService, RecallService, RankService and the two admin
// services once, then three bad requests, and prints one JSON object on stdout:
//   {"calls": {"<Service>/<Method>": {...summary}}, "errors": {"<case>": {...decoded}}}
// The pytest test tests/integration/test_node_client.py runs it against real servers.
//
// Usage: node client.js '{"gateway": "host:port", "recall": ..., "rank": ...,
//                         "protos": "<repo>/protos", "google_protos": "<dir with google/rpc>"}'
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const args = JSON.parse(process.argv[2]);
const PROTO_DIR = path.join(args.protos, "recstack", "v1");
const DEADLINE_MS = 10000;

// --- the contract, from protos/ only ------------------------------------------------
const definition = protoLoader.loadSync(
  ["gateway.proto", "recall.proto", "rank.proto"].map((f) => path.join(PROTO_DIR, f)),
  { includeDirs: [args.protos], keepCase: true, longs: String, enums: String, defaults: true },
);
const v1 = grpc.loadPackageDefinition(definition).recstack.v1;
const serviceConfig = fs.readFileSync(path.join(PROTO_DIR, "service_config.json"), "utf8");
const channelOptions = { "grpc.service_config": serviceConfig, "grpc.enable_retries": 1 };

function stub(Service, address) {
  return new Service(address, grpc.credentials.createInsecure(), channelOptions);
}

// --- google.rpc.Status decoding -------------------------------------------------------
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target) =>
  fs.existsSync(path.join(args.google_protos, target))
    ? path.join(args.google_protos, target)
    : target;
rpcRoot.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
const Status = rpcRoot.lookupType("google.rpc.Status");

function decodeStatus(err) {
  const raw = err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  const out = { code: grpc.status[err.code], message: err.details, details: [] };
  if (!raw.length) return out;
  const status = Status.decode(raw[0]);
  out.status_code = status.code;
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = rpcRoot.lookupType(typeName);
    const detail = type.toObject(type.decode(any.value), { longs: String, defaults: true });
    out.details.push({ type: typeName, ...detail });
  }
  const legacy = err.metadata.get("recstack-field");
  if (legacy.length) out.legacy_field = String(legacy[0]);
  return out;
}

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + DEADLINE_MS);
    client[method](request, { deadline }, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

async function expectError(client, method, request) {
  try {
    await call(client, method, request);
  } catch (err) {
    return decodeStatus(err);
  }
  throw new Error(`${method} unexpectedly succeeded`);
}

function packF32(values) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return buf;
}

async function main() {
  const gateway = stub(v1.RecommendService, args.gateway);
  const recall = stub(v1.RecallService, args.recall);
  const recallAdmin = stub(v1.RecallAdminService, args.recall);
  const rank = stub(v1.RankService, args.rank);
  const rankAdmin = stub(v1.RankAdminService, args.rank);
  const calls = {};
  const errors = {};

  // RecallService
  const info = await call(recall, "GetInfo", {});
  calls["RecallService/GetInfo"] = { dim: info.dim, max_k: info.max_k, version: info.bundle_version };
  const recalled = await call(recall, "Recall", { query_text: "a space adventure", k: 5 });
  calls["RecallService/Recall"] = {
    ids: recalled.ids,
    vector_bytes: recalled.vectors.length,
    version: recalled.bundle_version,
  };
  const batch = await call(recall, "RecallBatch", {
    requests: [{ query_text: "comedy", k: 2 }, { query_text: "drama", k: 3 }],
  });
  calls["RecallService/RecallBatch"] = { sizes: batch.responses.map((r) => r.ids.length) };
  const items = await call(recall, "GetItems", { ids: [recalled.ids[0], "node-no-such-item"] });
  calls["RecallService/GetItems"] = {
    ids: items.items.map((i) => i.id),
    missing: items.missing_ids,
  };
  const upserted = await call(recall, "Upsert", {
    items: [{ id: "node-item-1", title: "Node Item", text: "an item written from node" }],
  });
  calls["RecallService/Upsert"] = { sequence: upserted.sequence };
  const deleted = await call(recall, "Delete", { ids: ["node-item-1"] });
  calls["RecallService/Delete"] = { sequence: deleted.sequence };
  const legacyReload = await call(recall, "ReloadBundle", {});
  calls["RecallService/ReloadBundle"] = { swapped: legacyReload.swapped };
  const adminReload = await call(recallAdmin, "ReloadBundle", {});
  calls["RecallAdminService/ReloadBundle"] = {
    swapped: adminReload.swapped,
    version: adminReload.bundle_version,
  };

  // RankService: rank recall's candidates with its own query vector as the user vector.
  const rankInfo = await call(rank, "GetInfo", {});
  calls["RankService/GetInfo"] = {
    dim: rankInfo.dim,
    side_features: rankInfo.side_features,
    version: rankInfo.bundle_version,
  };
  const n = recalled.ids.length;
  const rankRequest = {
    user_vector: recalled.query_vector,
    candidate_ids: recalled.ids,
    candidate_vectors: recalled.vectors,
    embedding_version: recalled.bundle_version,
    candidate_features: packF32(new Array(n * rankInfo.side_features.length).fill(0)),
  };
  const ranked = await call(rank, "Rank", rankRequest);
  calls["RankService/Rank"] = { ids: ranked.items.map((i) => i.id), version: ranked.bundle_version };
  const legacyRankReload = await call(rank, "Reload", {});
  calls["RankService/Reload"] = { swapped: legacyRankReload.swapped };
  const rankAdminReload = await call(rankAdmin, "ReloadBundle", {});
  calls["RankAdminService/ReloadBundle"] = {
    swapped: rankAdminReload.swapped,
    version: rankAdminReload.bundle_version,
  };

  // RecommendService
  const recommended = await call(gateway, "Recommend", { query_text: "a space adventure", k: 3 });
  calls["RecommendService/Recommend"] = {
    ids: recommended.items.map((i) => i.id),
    version: recommended.bundle_version,
  };
  const recorded = await call(gateway, "RecordEvents", {
    events: [{ user_id: "node-user-1", item_id: recalled.ids[0], type: "click" }],
  });
  calls["RecommendService/RecordEvents"] = { sequence: recorded.sequence };
  const forgot = await call(gateway, "DeleteUser", { user_id: "node-user-1" });
  calls["RecommendService/DeleteUser"] = { events_deleted: forgot.events_deleted };

  // Rich errors
  errors.missing_query = await expectError(gateway, "Recommend", { k: 3 });
  errors.k_too_large = await expectError(recall, "Recall", { query_text: "x", k: 1000000 });
  errors.version_mismatch = await expectError(rank, "Rank", {
    ...rankRequest,
    embedding_version: "not-" + recalled.bundle_version,
  });

  for (const c of [gateway, recall, recallAdmin, rank, rankAdmin]) c.close();
  process.stdout.write(JSON.stringify({ calls, errors }) + "\n");
}

main().catch((err) => {
  process.stderr.write(`node client failed: ${err.stack || err}\n`);
  if (err.code !== undefined) process.stderr.write(JSON.stringify(decodeStatus(err)) + "\n");
  process.exit(1);
});
