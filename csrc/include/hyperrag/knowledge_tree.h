#pragma once
// The knowledge tree: metadata of cached document KV along retrieval paths.
#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "hyperrag/cost_profile.h"
#include "hyperrag/indexed_heap.h"
#include "hyperrag/policy.h"
#include "hyperrag/tier.h"

namespace hyperrag {

// (generation << 32) | slot: a removed node's id never names a later node.
using NodeId = std::uint64_t;

// One tier move of one node. to == nullopt: the copy in `from` was dropped
// (the node leaves the tree unless it is still resident in a faster tier).
// copied == false on a demotion: the slower copy already existed
// (swap-out-only-once), so only the `from` bytes are freed.
struct Eviction {
  NodeId node_id = 0;
  Tier from = Tier::kGpu;
  std::optional<Tier> to;
  bool copied = false;
  std::int64_t nbytes = 0;
};

struct MatchResult {
  std::vector<NodeId> node_ids;     // per matched document, root to leaf
  std::vector<Tier> tiers;          // fastest resident tier of each
  std::vector<std::int64_t> tokens;
  std::int64_t matched_docs = 0;
  std::int64_t matched_tokens = 0;
};

struct InsertResult {
  std::vector<NodeId> node_ids;     // the whole path
  std::vector<bool> created;        // per document: created by this call
  std::vector<NodeId> promoted;     // reused nodes copied into the insert's tier
  std::vector<Eviction> evictions;  // in the order they happened
};

// One request in one call (see KnowledgeTree::access).
struct AccessResult {
  std::vector<NodeId> node_ids;     // the whole path
  std::vector<bool> created;
  std::vector<Tier> hit_tiers;      // fastest tier of each hit before promotion
  std::int64_t matched_docs = 0;
  std::int64_t matched_tokens = 0;
  std::vector<NodeId> promoted;     // hits copied into the request's tier
  std::vector<Eviction> evictions;
};

// Result of remove_document: what was dropped, and how many of the
// document's nodes stayed because they (or a node below them) are locked.
struct RemoveResult {
  std::vector<Eviction> evictions;
  std::int64_t kept_locked = 0;
};

struct NodeInfo {
  NodeId node_id = 0;
  std::string doc_id;
  std::string ns;
  std::optional<NodeId> parent;     // nullopt for a first document
  std::int64_t tokens = 0;
  std::int64_t nbytes = 0;
  Tier tier = Tier::kGpu;           // fastest resident tier
  std::vector<Tier> resident_tiers; // fastest first
  std::vector<double> priorities;   // per resident tier
  std::uint32_t lock_count = 0;
  std::uint64_t frequency = 0;
  double priority = 0.0;            // in the fastest tier
  double cost_per_token = 0.0;      // mean sampled seconds per new token (0: none)
  std::uint64_t cost_samples = 0;
  std::uint64_t last_access = 0;    // logical tick
  std::vector<NodeId> children;
};

struct TreeStats {
  std::int64_t num_nodes = 0;
  std::int64_t interned_names = 0;           // document + namespace names held by live nodes
  std::vector<Tier> tiers;                   // configured tiers, fastest first
  std::vector<std::int64_t> used_bytes;      // per configured tier
  std::vector<std::int64_t> capacity_bytes;
  std::vector<std::uint64_t> evictions;      // nodes evicted from each tier
  std::vector<double> clock;
  std::uint64_t lookups = 0;
  std::uint64_t hits = 0;                    // lookups matching >= 1 document
  std::uint64_t hit_tokens = 0;
  std::uint64_t lookup_tokens = 0;           // sum of doc_tokens passed to lookups
};

// Prefix tree of document KV metadata (no KV bytes). One root per namespace
// (model + system prompt); a node is one document after the exact documents
// above it, keyed by (parent, document), so [d1, d2] and [d2, d1] differ.
// Each node is resident in one or more tiers; a parent is always resident in
// the same or a faster tier than its child. Eviction candidates of a tier are
// the unlocked nodes resident there with no child resident there, ordered by
// the policy in an indexed heap per tier. Document and namespace names are
// interned while a node uses them and released with their last node, so a
// long-running tree holds names in proportion to its nodes.
//
// Every public method is atomic: it validates all input first, and an
// operation that cannot make room rolls back, so a thrown exception leaves
// the tree unchanged. Thread-safe: one mutex serialises all methods.
class KnowledgeTree {
 public:
  // capacities: bytes per tier, any non-empty subset of gpu, host, remote; a
  // tier demotes into the next slower configured one.
  // policy: pgdsf (needs profile), gdsf, lru, lfu.
  KnowledgeTree(const std::map<std::string, std::int64_t>& capacities,
                const std::string& policy = "pgdsf",
                std::optional<CostProfile> profile = std::nullopt);

  // Longest cached prefix of doc_ids. Counts one lookup; doc_tokens, when
  // given, adds the path's tokens to lookup_tokens. lock: the matched nodes
  // are locked in the same critical section, so none can be evicted between
  // the lookup and the lock.
  MatchResult match(const std::string& ns, const std::vector<std::string>& doc_ids,
                    const std::optional<std::vector<std::int64_t>>& doc_tokens = std::nullopt,
                    bool lock = false);
  // The longest cached prefix, recording nothing (no lookup counted).
  MatchResult peek(const std::string& ns, const std::vector<std::string>& doc_ids) const;
  // The order of doc_ids whose cached prefix holds the most tokens: doc_ids[:fixed]
  // stay first, then the longest cached path through the other documents, then
  // the rest in their given order (ties keep the given order). Records nothing.
  std::vector<std::string> best_order(const std::string& ns, const std::vector<std::string>& doc_ids,
                                      std::size_t fixed = 0) const;

  // Adds the missing documents of the path to `tier`, evicting by policy to
  // make room. Existing prefix nodes are reused (their sizes must match);
  // those resident only in a slower tier are promoted into `tier` first, in
  // the same transaction, as promote() would. Throws CapacityError (tree
  // unchanged) when the locked set leaves no room, at once and without
  // evicting when what it needs exceeds the tier's capacity. lock: the whole
  // path is locked once in the same critical section.
  InsertResult insert(const std::string& ns, const std::vector<std::string>& doc_ids,
                      const std::vector<std::int64_t>& doc_tokens,
                      const std::vector<std::int64_t>& doc_bytes, Tier tier = Tier::kGpu,
                      bool lock = false);

  // Reference counts; a locked node and its ancestors are never evicted.
  void lock(const std::vector<NodeId>& ids);
  void unlock(const std::vector<NodeId>& ids);
  // A hit: frequency += 1 and priority refreshed.
  void touch(const std::vector<NodeId>& ids);
  // These nodes were computed by a request with `cached_tokens` cached that
  // prefilled `new_tokens`: adds T(cached, new) / new to each node's cost
  // samples (when the tree has a profile) and frequency += 1.
  void record_compute(const std::vector<NodeId>& ids, std::int64_t cached_tokens,
                      std::int64_t new_tokens);

  // Frees at least nbytes of `tier` in policy order.
  std::vector<Eviction> evict(Tier tier, std::int64_t nbytes);
  // Makes the nodes resident in `tier` (they keep their slower copies). A
  // node's parent must already be in `tier` or faster, or be listed before it.
  std::vector<Eviction> promote(const std::vector<NodeId>& ids, Tier tier = Tier::kGpu);
  // Drops a node and its subtree (none of it locked); one event per dropped copy.
  std::vector<Eviction> remove(NodeId id);
  // Drops every node of document `doc` (any namespace, any depth) with its
  // subtree, except nodes pinned by a lock, which stay and are counted. Used
  // when a document's content changed: its old KV must never be served.
  RemoveResult remove_document(const std::string& doc);
  // How many nodes hold document `doc` (0 when none).
  std::int64_t document_nodes(const std::string& doc) const;
  // Changes a tier's capacity, evicting down to it.
  std::vector<Eviction> set_capacity(Tier tier, std::int64_t nbytes);

  // One request in one call: match; insert (which promotes hits slower than
  // `tier` into it and adds the missing documents); touch the hits; record
  // the compute of the new documents (cached = matched tokens, new = their
  // tokens); then lock the whole path if `lock`. Equivalent to that sequence
  // of calls, but atomic.
  AccessResult access(const std::string& ns, const std::vector<std::string>& doc_ids,
                      const std::vector<std::int64_t>& doc_tokens,
                      const std::vector<std::int64_t>& doc_bytes, Tier tier = Tier::kGpu,
                      bool lock = false);

  NodeInfo node(NodeId id) const;
  std::vector<NodeId> node_ids() const;  // every document node, ascending
  TreeStats stats() const;
  int num_tiers() const { return num_tiers_; }
  std::vector<Tier> tiers() const;  // configured, fastest first
  const char* policy_name() const { return policy_->name(); }
  // Recomputes every derived quantity (bytes per tier, child counts, pins,
  // heap membership and keys) and returns a description of each mismatch.
  std::vector<std::string> check_invariants() const;

 private:
  static constexpr std::uint32_t kNil = 0xffffffffu;

  struct Node {
    std::uint32_t gen = 1;          // part of the NodeId: a reused slot gets a new generation
    bool alive = false;
    bool root = false;
    bool dropped = false;           // left every tier in an open transaction
    std::uint8_t resident = 0;      // bit t: resident in tier t
    std::uint32_t ns = 0;
    std::uint32_t doc = 0;
    std::uint32_t parent = kNil;
    std::uint32_t first_child = kNil, next_sibling = kNil, prev_sibling = kNil;
    std::uint32_t next_same_doc = kNil, prev_same_doc = kNil;  // the document's nodes
    std::int64_t tokens = 0;
    std::int64_t nbytes = 0;
    std::array<std::uint32_t, kMaxTiers> children_in{};  // children resident per tier
    std::uint32_t lock_count = 0;
    std::uint32_t pin_count = 0;    // locks on this node and its descendants
    std::uint64_t frequency = 0;
    std::uint64_t tick = 0;
    double cost_sum = 0.0;
    std::uint64_t cost_samples = 0;
    std::array<double, kMaxTiers> prio{};
    std::uint64_t journal_epoch = 0;
  };

  struct HeapKey {
    double prio;
    std::uint64_t tick;
    bool operator<(const HeapKey& o) const {
      return prio < o.prio || (prio == o.prio && tick < o.tick);
    }
  };

  // Undo log of an operation that may fail while making room.
  struct Journal {
    bool active = false;
    std::uint64_t epoch = 0;
    std::vector<std::pair<std::uint32_t, Node>> saved;  // state before first change
    std::vector<std::uint32_t> dropped;
    std::array<std::int64_t, kMaxTiers> used{};
    std::array<double, kMaxTiers> clock{};
    std::array<std::uint64_t, kMaxTiers> evictions{};
    std::uint64_t tick = 0;
  };

  // A document or namespace name held while nodes use it. Documents list
  // their nodes (next_same_doc) so a changed document can be dropped at once.
  struct DocName {
    std::string name;
    std::uint32_t first_node = kNil;
    std::uint32_t nodes = 0;
  };
  struct NsName {
    std::string name;
    std::uint32_t root = kNil;
  };

  // Helpers below assume mu_ is held. Internally tiers are levels 0..n-1
  // (the configured tiers, fastest first); the public API speaks Tier.
  NodeId id_of(std::uint32_t s) const { return (static_cast<NodeId>(nodes_[s].gen) << 32) | s; }
  std::uint32_t resolve(NodeId id, const char* op) const;
  std::vector<std::uint32_t> resolve_all(const std::vector<NodeId>& ids, const char* op) const;
  int level_of(Tier t, const char* op) const;
  Tier tier_at(int level) const { return level_tier_[level]; }
  const char* level_name(int level) const { return tier_name(level_tier_[level]); }
  std::string configured_names() const;
  static int fastest(const Node& n);
  static std::uint64_t child_key(std::uint32_t parent, std::uint32_t doc) {
    return (static_cast<std::uint64_t>(parent) << 32) | doc;
  }
  std::uint32_t find_child(std::uint32_t parent, const std::string& doc) const;
  std::vector<std::uint32_t> walk(const std::string& ns, const std::vector<std::string>& docs) const;
  MatchResult describe(const std::vector<std::uint32_t>& path) const;
  static void validate_docs(const char* op, const std::string& ns, const std::vector<std::string>& docs);
  static void validate_sizes(const char* op, const char* field, std::size_t n,
                             const std::vector<std::int64_t>& values);
  // Argument checks of insert/access that need no lock.
  static void validate_request(const char* op, const std::string& ns, const std::vector<std::string>& docs,
                               const std::vector<std::int64_t>& tokens, const std::vector<std::int64_t>& bytes);
  void check_prefix_sizes(const char* op, const std::vector<std::uint32_t>& prefix,
                          const std::vector<std::int64_t>& tokens,
                          const std::vector<std::int64_t>& bytes) const;
  // The cached prefix of a request's path, after checking that cached sizes agree.
  std::vector<std::uint32_t> checked_prefix(const char* op, const std::string& ns,
                                            const std::vector<std::string>& docs,
                                            const std::vector<std::int64_t>& tokens,
                                            const std::vector<std::int64_t>& bytes) const;
  // Throws CapacityError before anything changes when `need` bytes can never fit in level t.
  void check_fits(const char* op, int t, __int128 need) const;
  void lock_slot(std::uint32_t s);
  PolicyInput policy_input(const Node& n) const;
  void sync(std::uint32_t s);
  void save(std::uint32_t s);
  void refresh(std::uint32_t s);
  void pin_path(std::uint32_t s, int delta);
  void add_resident(std::uint32_t s, int t);
  void remove_resident(std::uint32_t s, int t);
  bool make_room(int t, std::int64_t need, std::vector<Eviction>& evs);
  bool promote_into(const std::vector<std::uint32_t>& order, int t, std::vector<Eviction>& evs);
  bool evict_one(std::uint32_t s, int t, std::vector<Eviction>& evs);
  void remove_subtree(std::uint32_t s, std::vector<Eviction>& evs);
  void begin();
  void commit();
  void rollback();
  [[noreturn]] void throw_capacity(const char* op) const;
  std::uint32_t intern_doc(const std::string& name);
  std::uint32_t root_for(const std::string& ns);
  std::uint32_t new_node(std::uint32_t parent, std::uint32_t doc, std::int64_t tokens,
                         std::int64_t nbytes);
  void delete_node(std::uint32_t s);
  void release_slot(std::uint32_t s);
  std::vector<std::uint32_t> create_path(const std::string& ns,
                                         const std::vector<std::string>& docs,
                                         const std::vector<std::int64_t>& tokens,
                                         const std::vector<std::int64_t>& bytes,
                                         const std::vector<std::uint32_t>& prefix, int t);
  std::vector<std::uint32_t> insert_path(const char* op, const std::string& ns,
                                         const std::vector<std::string>& docs,
                                         const std::vector<std::int64_t>& tokens,
                                         const std::vector<std::int64_t>& bytes,
                                         const std::vector<std::uint32_t>& prefix, int t, InsertResult& r);
  void computed(const std::vector<std::uint32_t>& slots, std::int64_t cached_tokens, std::int64_t new_tokens);
  void record_lookup(const std::vector<std::uint32_t>& prefix, std::uint64_t lookup_tokens);

  mutable std::mutex mu_;
  int num_tiers_ = 0;
  std::array<Tier, kMaxTiers> level_tier_{};  // level -> tier
  std::array<int, kMaxTiers> tier_level_{};   // tier -> level, -1 when not configured
  std::shared_ptr<const CostProfile> profile_;
  std::unique_ptr<EvictionPolicy> policy_;
  std::array<std::int64_t, kMaxTiers> capacity_{};
  std::array<std::int64_t, kMaxTiers> used_{};
  std::array<double, kMaxTiers> clock_{};
  std::array<std::uint64_t, kMaxTiers> evictions_{};
  std::array<IndexedHeap<HeapKey>, kMaxTiers> heaps_;
  std::vector<Node> nodes_;
  std::vector<std::uint32_t> free_slots_;
  std::unordered_map<std::uint64_t, std::uint32_t> children_;  // (parent, doc) -> slot
  std::unordered_map<std::string, std::uint32_t> doc_index_, ns_index_;
  std::vector<DocName> docs_;
  std::vector<NsName> namespaces_;
  std::vector<std::uint32_t> free_docs_, free_namespaces_;
  std::int64_t num_nodes_ = 0;
  std::uint64_t tick_ = 0;
  std::uint64_t lookups_ = 0, hits_ = 0, hit_tokens_ = 0, lookup_tokens_ = 0;
  Journal journal_;
  int fail_tier_ = 0;            // level where the last make_room failed
  std::int64_t fail_need_ = 0;
};

}  // namespace hyperrag
