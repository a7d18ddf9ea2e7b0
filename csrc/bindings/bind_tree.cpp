// Bindings for CostProfile and KnowledgeTree. The core validates every
// argument before mutating; the bindings convert types with errors naming the
// argument (convert.h; tiers travel as strings) and release the GIL around
// the work.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "convert.h"
#include "hyperrag/cost_profile.h"
#include "hyperrag/errors.h"
#include "hyperrag/knowledge_tree.h"
#include "hyperrag/tier.h"

namespace py = pybind11;
using namespace hyperrag;
using namespace hyperrag::bindings;

namespace {

using Release = py::call_guard<py::gil_scoped_release>;

py::list tier_list(const std::vector<Tier>& tiers) {
  py::list out;
  for (Tier t : tiers) out.append(tier_name(t));
  return out;
}

template <class T>
py::dict per_tier(const TreeStats& s, const std::vector<T>& values) {
  py::dict out;
  for (std::size_t t = 0; t < values.size(); ++t) out[tier_name(s.tiers[t])] = values[t];
  return out;
}

Tier tier_arg(py::handle obj, const char* op) {
  const std::string field = std::string(op) + ": tier";
  return parse_tier(to_string(obj, field), field.c_str());
}

// lock, unlock, touch: a method taking node ids, run with the GIL released.
template <void (KnowledgeTree::*Method)(const std::vector<NodeId>&)>
auto on_node_ids(const char* op) {
  return [op](KnowledgeTree& t, py::handle ids) {
    const std::vector<NodeId> v = to_uint64s(ids, std::string(op) + ": node_ids");
    py::gil_scoped_release release;
    (t.*Method)(v);
  };
}

// insert, access: a request for a whole path, run with the GIL released.
template <auto Method>
auto on_path(const char* op) {
  return [op](KnowledgeTree& t, py::handle ns, py::handle docs, py::handle tokens, py::handle bytes, py::handle tier,
              py::handle lock) {
    const std::string o(op);
    auto n = to_string(ns, o + ": namespace");
    auto d = to_strings(docs, o + ": doc_ids");
    auto k = to_int64s(tokens, o + ": doc_tokens");
    auto b = to_int64s(bytes, o + ": doc_bytes");
    const Tier parsed = tier_arg(tier, op);
    const bool l = to_bool(lock, o + ": lock");
    py::gil_scoped_release release;
    return (t.*Method)(n, d, k, b, parsed, l);
  };
}

std::optional<std::vector<std::int64_t>> optional_int64s(py::handle obj, const std::string& field) {
  if (obj.is_none()) return std::nullopt;
  return to_int64s(obj, field);
}

std::string repr_eviction(const Eviction& e) {
  std::ostringstream s;
  s << "Eviction(node_id=" << e.node_id << ", from_tier='" << tier_name(e.from) << "', to_tier="
    << (e.to ? "'" + std::string(tier_name(*e.to)) + "'" : std::string("None"))
    << ", copied=" << (e.copied ? "True" : "False") << ", nbytes=" << e.nbytes << ")";
  return s.str();
}

}  // namespace

void bind_tree(py::module_& m) {
  py::register_exception<CapacityError>(m, "CapacityError", PyExc_ValueError);
  py::register_exception<UnknownNodeError>(m, "UnknownNodeError", PyExc_KeyError);

  m.attr("TIERS") = py::make_tuple("gpu", "host", "remote");
  m.attr("POLICIES") = py::make_tuple("pgdsf", "gdsf", "lru", "lfu");

  py::class_<CostProfile>(m, "CostProfile",
                          "Prefill seconds T(cached_tokens, new_tokens) on a grid; bilinear inside, clamped at the\n"
                          "edges except linear extrapolation above the new_tokens grid. Immutable, thread-safe.")
      .def(py::init([](py::handle cached, py::handle fresh, py::handle seconds) {
             std::vector<std::vector<double>> table;
             py::sequence rows = to_sequence(seconds, "CostProfile: seconds", "rows of numbers");
             for (std::size_t i = 0; i < rows.size(); ++i)
               table.push_back(to_doubles(rows[i], "CostProfile: seconds[" + std::to_string(i) + "]"));
             return CostProfile(to_doubles(cached, "CostProfile: cached_tokens"),
                                to_doubles(fresh, "CostProfile: new_tokens"), std::move(table));
           }),
           py::arg("cached_tokens"), py::arg("new_tokens"), py::arg("seconds"))
      .def(
          "seconds",
          [](const CostProfile& p, py::handle cached, py::handle fresh) {
            return p.seconds(to_double(cached, "seconds: cached_tokens"), to_double(fresh, "seconds: new_tokens"));
          },
          py::arg("cached_tokens"), py::arg("new_tokens"))
      .def(
          "cost_per_token",
          [](const CostProfile& p, py::handle cached, py::handle fresh) {
            return p.cost_per_token(to_double(cached, "cost_per_token: cached_tokens"),
                                    to_double(fresh, "cost_per_token: new_tokens"));
          },
          py::arg("cached_tokens"), py::arg("new_tokens"))
      .def_property_readonly("cached_tokens", &CostProfile::cached_grid)
      .def_property_readonly("new_tokens", &CostProfile::new_grid)
      .def_property_readonly("table", &CostProfile::table)
      .def("__repr__", [](const CostProfile& p) {
        return "CostProfile(" + std::to_string(p.cached_grid().size()) + " cached x " +
               std::to_string(p.new_grid().size()) + " new grid points)";
      });

  py::class_<Eviction>(m, "Eviction",
                       "One tier move. to_tier None: the from_tier copy was dropped (the node leaves the tree\n"
                       "unless a faster copy remains). copied False on a demotion: the slower copy already\n"
                       "existed (swap-out-only-once), so only from_tier bytes are freed.")
      .def_readonly("node_id", &Eviction::node_id)
      .def_property_readonly("from_tier", [](const Eviction& e) { return tier_name(e.from); })
      .def_property_readonly("to_tier", [](const Eviction& e) -> py::object {
        return e.to ? py::str(tier_name(*e.to)) : py::object(py::none());
      })
      .def_readonly("copied", &Eviction::copied)
      .def_readonly("nbytes", &Eviction::nbytes)
      .def("__eq__", [](const Eviction& a, const Eviction& b) {
        return a.node_id == b.node_id && a.from == b.from && a.to == b.to && a.copied == b.copied &&
               a.nbytes == b.nbytes;
      })
      .def("__repr__", &repr_eviction);

  py::class_<MatchResult>(m, "Match", "Longest cached prefix: per matched document its node id, fastest tier and tokens.")
      .def_readonly("node_ids", &MatchResult::node_ids)
      .def_property_readonly("tiers", [](const MatchResult& r) { return tier_list(r.tiers); })
      .def_readonly("tokens", &MatchResult::tokens)
      .def_readonly("matched_docs", &MatchResult::matched_docs)
      .def_readonly("matched_tokens", &MatchResult::matched_tokens)
      .def("__repr__", [](const MatchResult& r) {
        return "Match(matched_docs=" + std::to_string(r.matched_docs) +
               ", matched_tokens=" + std::to_string(r.matched_tokens) + ")";
      });

  py::class_<InsertResult>(m, "InsertResult",
                           "node_ids of the whole path, created per document, promoted (reused nodes copied into\n"
                           "the insert's tier), evictions in order.")
      .def_readonly("node_ids", &InsertResult::node_ids)
      .def_readonly("created", &InsertResult::created)
      .def_readonly("promoted", &InsertResult::promoted)
      .def_readonly("evictions", &InsertResult::evictions)
      .def("__repr__", [](const InsertResult& r) {
        return "InsertResult(" + std::to_string(r.node_ids.size()) + " nodes, " +
               std::to_string(r.evictions.size()) + " evictions)";
      });

  py::class_<AccessResult>(m, "AccessResult", "Result of access(): the path, hits (with their tiers before promotion), promotions, evictions.")
      .def_readonly("node_ids", &AccessResult::node_ids)
      .def_readonly("created", &AccessResult::created)
      .def_property_readonly("hit_tiers", [](const AccessResult& r) { return tier_list(r.hit_tiers); })
      .def_readonly("matched_docs", &AccessResult::matched_docs)
      .def_readonly("matched_tokens", &AccessResult::matched_tokens)
      .def_readonly("promoted", &AccessResult::promoted)
      .def_readonly("evictions", &AccessResult::evictions)
      .def("__repr__", [](const AccessResult& r) {
        return "AccessResult(matched_docs=" + std::to_string(r.matched_docs) + ", " +
               std::to_string(r.node_ids.size()) + " nodes, " + std::to_string(r.evictions.size()) + " evictions)";
      });

  py::class_<RemoveResult>(m, "RemoveResult",
                           "remove_document(): the dropped copies, and how many of the document's nodes stayed\n"
                           "because they or a node below them are locked.")
      .def_readonly("evictions", &RemoveResult::evictions)
      .def_readonly("kept_locked", &RemoveResult::kept_locked)
      .def("__repr__", [](const RemoveResult& r) {
        return "RemoveResult(" + std::to_string(r.evictions.size()) + " evictions, kept_locked=" +
               std::to_string(r.kept_locked) + ")";
      });

  py::class_<NodeInfo>(m, "NodeInfo", "A snapshot of one node; priority is the one in its fastest tier.")
      .def_readonly("node_id", &NodeInfo::node_id)
      .def_readonly("doc_id", &NodeInfo::doc_id)
      .def_readonly("namespace", &NodeInfo::ns)
      .def_readonly("parent", &NodeInfo::parent)
      .def_readonly("tokens", &NodeInfo::tokens)
      .def_readonly("nbytes", &NodeInfo::nbytes)
      .def_property_readonly("tier", [](const NodeInfo& n) { return tier_name(n.tier); })
      .def_property_readonly("resident_tiers", [](const NodeInfo& n) { return tier_list(n.resident_tiers); })
      .def_readonly("priorities", &NodeInfo::priorities)
      .def_readonly("lock_count", &NodeInfo::lock_count)
      .def_readonly("frequency", &NodeInfo::frequency)
      .def_readonly("priority", &NodeInfo::priority)
      .def_readonly("cost_per_token", &NodeInfo::cost_per_token)
      .def_readonly("cost_samples", &NodeInfo::cost_samples)
      .def_readonly("last_access", &NodeInfo::last_access)
      .def_readonly("children", &NodeInfo::children)
      .def("__repr__", [](const NodeInfo& n) {
        return "NodeInfo(node_id=" + std::to_string(n.node_id) + ", doc_id='" + n.doc_id + "', tier='" +
               tier_name(n.tier) + "', tokens=" + std::to_string(n.tokens) + ")";
      });

  py::class_<TreeStats>(m, "TreeStats", "Counters and per-tier dicts (used_bytes, capacity_bytes, evictions, clock).")
      .def_readonly("num_nodes", &TreeStats::num_nodes)
      .def_readonly("interned_names", &TreeStats::interned_names,
                    "Document and namespace names held (released with their last node).")
      .def_property_readonly("used_bytes", [](const TreeStats& s) { return per_tier(s, s.used_bytes); })
      .def_property_readonly("capacity_bytes", [](const TreeStats& s) { return per_tier(s, s.capacity_bytes); })
      .def_property_readonly("evictions", [](const TreeStats& s) { return per_tier(s, s.evictions); })
      .def_property_readonly("clock", [](const TreeStats& s) { return per_tier(s, s.clock); })
      .def_readonly("lookups", &TreeStats::lookups)
      .def_readonly("hits", &TreeStats::hits)
      .def_readonly("hit_tokens", &TreeStats::hit_tokens)
      .def_readonly("lookup_tokens", &TreeStats::lookup_tokens)
      .def("__repr__", [](const TreeStats& s) {
        return "TreeStats(num_nodes=" + std::to_string(s.num_nodes) + ", lookups=" + std::to_string(s.lookups) +
               ", hits=" + std::to_string(s.hits) + ")";
      });

  py::class_<KnowledgeTree>(m, "KnowledgeTree",
                            "Prefix tree of document KV metadata; one node per document after the exact documents\n"
                            "above it. capacities: bytes per tier (any of gpu, host, remote); policy: pgdsf\n"
                            "(needs profile), gdsf, lru or lfu. Methods are atomic and thread-safe; see docs/cache_api.md.")
      .def(py::init([](py::handle capacities, py::handle policy, py::handle profile) {
             if (!py::isinstance<py::dict>(capacities)) {
               bad_type("KnowledgeTree: capacities", "a dict of tier name -> bytes", capacities);
             }
             std::map<std::string, std::int64_t> caps;
             for (auto item : capacities.cast<py::dict>()) {
               const std::string name = to_string(item.first, "KnowledgeTree: capacities key");
               caps[name] = to_int64(item.second, "KnowledgeTree: capacities['" + name + "']");
             }
             std::optional<CostProfile> prof;
             if (!profile.is_none()) {
               if (!py::isinstance<CostProfile>(profile)) bad_type("KnowledgeTree: profile", "a CostProfile or None", profile);
               prof = profile.cast<CostProfile>();
             }
             return std::make_unique<KnowledgeTree>(caps, to_string(policy, "KnowledgeTree: policy"), prof);
           }),
           py::arg("capacities"), py::arg("policy") = "pgdsf", py::arg("profile") = py::none())
      .def(
          "match",
          [](KnowledgeTree& t, py::handle ns, py::handle docs, py::handle tokens, py::handle lock) {
            auto n = to_string(ns, "match: namespace");
            auto d = to_strings(docs, "match: doc_ids");
            auto k = optional_int64s(tokens, "match: doc_tokens");
            const bool l = to_bool(lock, "match: lock");
            py::gil_scoped_release release;
            return t.match(n, d, k, l);
          },
          py::arg("namespace"), py::arg("doc_ids"), py::arg("doc_tokens") = py::none(), py::arg("lock") = false,
          "Longest cached prefix of doc_ids; counts one lookup (doc_tokens adds to lookup_tokens).\n"
          "lock=True locks the matched nodes in the same call (none can be evicted in between).")
      .def(
          "peek",
          [](const KnowledgeTree& t, py::handle ns, py::handle docs) {
            auto n = to_string(ns, "peek: namespace");
            auto d = to_strings(docs, "peek: doc_ids");
            py::gil_scoped_release release;
            return t.peek(n, d);
          },
          py::arg("namespace"), py::arg("doc_ids"), "The longest cached prefix, recording nothing (no lookup counted).")
      .def(
          "best_order",
          [](const KnowledgeTree& t, py::handle ns, py::handle docs, py::handle fixed) {
            auto n = to_string(ns, "best_order: namespace");
            auto d = to_strings(docs, "best_order: doc_ids");
            const auto f = to_int64(fixed, "best_order: fixed");
            if (f < 0) throw py::value_error("best_order: fixed must be >= 0, got " + std::to_string(f));
            py::gil_scoped_release release;
            return t.best_order(n, d, static_cast<std::size_t>(f));
          },
          py::arg("namespace"), py::arg("doc_ids"), py::arg("fixed") = 0,
          "The order of doc_ids whose cached prefix holds the most tokens: doc_ids[:fixed] first, then the\n"
          "longest cached path through the others, then the rest in the given order. Records nothing.")
      .def(
          "insert", on_path<&KnowledgeTree::insert>("insert"),
          py::arg("namespace"), py::arg("doc_ids"), py::arg("doc_tokens"), py::arg("doc_bytes"),
          py::arg("tier") = "gpu", py::arg("lock") = false,
          "Add the missing documents of the path to tier, evicting by policy; reused prefix nodes must\n"
          "match in size, and those only in a slower tier are promoted into tier in the same transaction.\n"
          "CapacityError (tree unchanged) if locks leave no room, at once if it can never fit.\n"
          "lock=True locks the whole path in the same call.")
      .def(
          "access", on_path<&KnowledgeTree::access>("access"),
          py::arg("namespace"), py::arg("doc_ids"), py::arg("doc_tokens"), py::arg("doc_bytes"),
          py::arg("tier") = "gpu", py::arg("lock") = false,
          "One request atomically: match, protect hits, promote slow hits, insert the rest, touch hits,\n"
          "record the new documents' compute, then keep the path locked if lock=True.")
      .def("lock", on_node_ids<&KnowledgeTree::lock>("lock"), py::arg("node_ids"),
           "Reference-count locks; a locked node and its ancestors are never evicted.")
      .def("unlock", on_node_ids<&KnowledgeTree::unlock>("unlock"), py::arg("node_ids"),
           "Release locks; ValueError (nothing changed) if a node is unlocked more often than locked.")
      .def("touch", on_node_ids<&KnowledgeTree::touch>("touch"), py::arg("node_ids"),
           "A hit: frequency += 1, priority refreshed.")
      .def(
          "record_compute",
          [](KnowledgeTree& t, py::handle ids, py::handle cached, py::handle fresh) {
            auto v = to_uint64s(ids, "record_compute: node_ids");
            const auto c = to_int64(cached, "record_compute: cached_tokens");
            const auto n = to_int64(fresh, "record_compute: new_tokens");
            py::gil_scoped_release release;
            t.record_compute(v, c, n);
          },
          py::arg("node_ids"), py::arg("cached_tokens"), py::arg("new_tokens"),
          "These nodes were computed by a request with cached_tokens cached that prefilled new_tokens:\n"
          "add the sample T(cached, new) / new and frequency += 1.")
      .def(
          "evict",
          [](KnowledgeTree& t, py::handle tier, py::handle nbytes) {
            const Tier parsed = tier_arg(tier, "evict");
            const auto n = to_int64(nbytes, "evict: nbytes");
            py::gil_scoped_release release;
            return t.evict(parsed, n);
          },
          py::arg("tier"), py::arg("nbytes"), "Free at least nbytes of tier in policy order.")
      .def(
          "promote",
          [](KnowledgeTree& t, py::handle ids, py::handle tier) {
            auto v = to_uint64s(ids, "promote: node_ids");
            const Tier parsed = tier_arg(tier, "promote");
            py::gil_scoped_release release;
            return t.promote(v, parsed);
          },
          py::arg("node_ids"), py::arg("tier") = "gpu",
          "Make the nodes resident in tier, keeping slower copies; list ancestors before descendants.")
      .def(
          "remove",
          [](KnowledgeTree& t, py::handle id) {
            const auto v = to_uint64(id, "remove: node_id");
            py::gil_scoped_release release;
            return t.remove(v);
          },
          py::arg("node_id"), "Drop an unlocked node and its subtree; one Eviction(to_tier=None) per dropped copy.")
      .def(
          "remove_document",
          [](KnowledgeTree& t, py::handle doc) {
            auto d = to_string(doc, "remove_document: doc_id");
            py::gil_scoped_release release;
            return t.remove_document(d);
          },
          py::arg("doc_id"),
          "Drop every node of this document (any namespace, any depth) with its subtree, except locked\n"
          "ones (counted in kept_locked): its content changed, so its KV must never be served again.")
      .def(
          "document_nodes",
          [](const KnowledgeTree& t, py::handle doc) {
            auto d = to_string(doc, "document_nodes: doc_id");
            py::gil_scoped_release release;
            return t.document_nodes(d);
          },
          py::arg("doc_id"), "How many nodes hold this document (0 when none).")
      .def(
          "set_capacity",
          [](KnowledgeTree& t, py::handle tier, py::handle nbytes) {
            const Tier parsed = tier_arg(tier, "set_capacity");
            const auto n = to_int64(nbytes, "set_capacity: nbytes");
            py::gil_scoped_release release;
            return t.set_capacity(parsed, n);
          },
          py::arg("tier"), py::arg("nbytes"), "Change a tier's capacity, evicting down to it.")
      .def(
          "node",
          [](const KnowledgeTree& t, py::handle id) {
            const auto v = to_uint64(id, "node: node_id");
            py::gil_scoped_release release;
            return t.node(v);
          },
          py::arg("node_id"))
      .def("node_ids", &KnowledgeTree::node_ids, Release())
      .def("stats", &KnowledgeTree::stats, Release())
      .def("check_invariants", &KnowledgeTree::check_invariants, Release(),
           "Recompute bytes, child counts, pins and heap entries; a description of each mismatch.")
      .def_property_readonly("policy", &KnowledgeTree::policy_name)
      .def_property_readonly("tiers", [](const KnowledgeTree& t) { return tier_list(t.tiers()); })
      .def("__repr__", [](const KnowledgeTree& t) {
        return std::string("KnowledgeTree(policy='") + t.policy_name() + "', " + std::to_string(t.num_tiers()) +
               " tiers)";
      });
}
