#include "hyperrag/knowledge_tree.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <unordered_set>

#include "hyperrag/errors.h"

namespace hyperrag {
namespace {

std::string quoted(const std::string& s) { return "'" + s + "'"; }

// Token sums for statistics saturate instead of overflowing. Byte sums that
// decide whether something fits are exact (Wide) and checked against the
// capacity before any int64 arithmetic on them.
std::int64_t sat_add(std::int64_t a, std::int64_t b) {
  return b > std::numeric_limits<std::int64_t>::max() - a ? std::numeric_limits<std::int64_t>::max() : a + b;
}
using Wide = __int128;

// An index into a table of slots, reusing a released one first.
template <class Entry>
std::uint32_t take_index(std::vector<Entry>& table, std::vector<std::uint32_t>& released) {
  if (!released.empty()) {
    const std::uint32_t id = released.back();
    released.pop_back();
    return id;
  }
  table.emplace_back();
  return static_cast<std::uint32_t>(table.size() - 1);
}

}  // namespace

// ---------------------------------------------------------------- construction

KnowledgeTree::KnowledgeTree(const std::map<std::string, std::int64_t>& capacities,
                             const std::string& policy, std::optional<CostProfile> profile) {
  if (capacities.empty()) {
    throw std::invalid_argument("capacities: must not be empty (tiers: any of gpu, host, remote)");
  }
  for (const auto& [name, bytes] : capacities) {
    parse_tier(name, "capacities");
    if (bytes <= 0) {
      throw std::invalid_argument("capacities[" + quoted(name) + "]: must be > 0 bytes (got " +
                                  std::to_string(bytes) + ")");
    }
  }
  tier_level_.fill(-1);
  for (int t = 0; t < kMaxTiers; ++t) {
    auto it = capacities.find(tier_name(static_cast<Tier>(t)));
    if (it == capacities.end()) continue;
    level_tier_[num_tiers_] = static_cast<Tier>(t);
    tier_level_[t] = num_tiers_;
    capacity_[num_tiers_] = it->second;
    ++num_tiers_;
  }
  if (profile) profile_ = std::make_shared<const CostProfile>(std::move(*profile));
  policy_ = make_policy(policy, profile_);
}

// ------------------------------------------------------------------ validation

void KnowledgeTree::validate_docs(const char* op, const std::string& ns, const std::vector<std::string>& docs) {
  if (ns.empty()) throw std::invalid_argument(std::string(op) + ": namespace must be a non-empty string");
  if (docs.empty()) throw std::invalid_argument(std::string(op) + ": doc_ids must not be empty");
  for (std::size_t i = 0; i < docs.size(); ++i) {
    if (docs[i].empty()) {
      throw std::invalid_argument(std::string(op) + ": doc_ids[" + std::to_string(i) + "] is an empty string");
    }
  }
  // A path never holds a document twice. Paths are short: pairwise is cheapest.
  auto duplicate = [&](std::size_t i) {
    throw std::invalid_argument(std::string(op) + ": doc_ids has " + quoted(docs[i]) +
                                " more than once (a path holds each document once)");
  };
  if (docs.size() <= 16) {
    for (std::size_t i = 1; i < docs.size(); ++i)
      for (std::size_t j = 0; j < i; ++j)
        if (docs[i] == docs[j]) duplicate(i);
  } else {
    std::unordered_set<std::string> seen;
    for (std::size_t i = 0; i < docs.size(); ++i)
      if (!seen.insert(docs[i]).second) duplicate(i);
  }
}

void KnowledgeTree::validate_sizes(const char* op, const char* field, std::size_t n,
                                   const std::vector<std::int64_t>& values) {
  if (values.size() != n) {
    throw std::invalid_argument(std::string(op) + ": " + field + " has " + std::to_string(values.size()) +
                                " entries but doc_ids has " + std::to_string(n));
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (values[i] <= 0) {
      throw std::invalid_argument(std::string(op) + ": " + field + "[" + std::to_string(i) + "] must be > 0 (got " +
                                  std::to_string(values[i]) + ")");
    }
  }
}

std::string KnowledgeTree::configured_names() const {
  std::string have;
  for (int i = 0; i < num_tiers_; ++i) have += (i ? ", " : "") + std::string(level_name(i));
  return have;
}

int KnowledgeTree::level_of(Tier t, const char* op) const {
  const int level = tier_level_[static_cast<int>(t)];
  if (level >= 0) return level;
  throw std::invalid_argument(std::string(op) + ": tier " + quoted(tier_name(t)) +
                              " is not configured (this tree has: " + configured_names() + ")");
}

void KnowledgeTree::check_fits(const char* op, int t, __int128 need) const {
  if (need <= capacity_[t]) return;
  const std::string amount = need > std::numeric_limits<std::int64_t>::max()
                                 ? "more than " + std::to_string(std::numeric_limits<std::int64_t>::max())
                                 : std::to_string(static_cast<std::int64_t>(need));
  throw CapacityError(std::string(op) + ": needs " + amount + " bytes in tier " +
                      quoted(level_name(t)) + " but its capacity is " + std::to_string(capacity_[t]) +
                      " bytes: a document larger than its tier can never be cached there");
}

void KnowledgeTree::validate_request(const char* op, const std::string& ns, const std::vector<std::string>& docs,
                                    const std::vector<std::int64_t>& tokens,
                                    const std::vector<std::int64_t>& bytes) {
  validate_docs(op, ns, docs);
  validate_sizes(op, "doc_tokens", docs.size(), tokens);
  validate_sizes(op, "doc_bytes", docs.size(), bytes);
}

std::vector<std::uint32_t> KnowledgeTree::checked_prefix(const char* op, const std::string& ns,
                                                         const std::vector<std::string>& docs,
                                                         const std::vector<std::int64_t>& tokens,
                                                         const std::vector<std::int64_t>& bytes) const {
  std::vector<std::uint32_t> prefix = walk(ns, docs);
  check_prefix_sizes(op, prefix, tokens, bytes);
  return prefix;
}

void KnowledgeTree::check_prefix_sizes(const char* op, const std::vector<std::uint32_t>& prefix,
                                       const std::vector<std::int64_t>& tokens,
                                       const std::vector<std::int64_t>& bytes) const {
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    const Node& n = nodes_[prefix[i]];
    if (n.tokens != tokens[i] || n.nbytes != bytes[i]) {
      throw std::invalid_argument(std::string(op) + ": document " + quoted(docs_[n.doc].name) + " is cached with " +
                                  std::to_string(n.tokens) + " tokens / " + std::to_string(n.nbytes) +
                                  " bytes but doc_tokens[" + std::to_string(i) + "]=" + std::to_string(tokens[i]) +
                                  ", doc_bytes[" + std::to_string(i) + "]=" + std::to_string(bytes[i]));
    }
  }
}

std::uint32_t KnowledgeTree::resolve(NodeId id, const char* op) const {
  const std::uint64_t slot = id & 0xffffffffu;
  if (slot < nodes_.size()) {
    const Node& n = nodes_[slot];
    if (n.alive && !n.root && !n.dropped && n.gen == (id >> 32)) return static_cast<std::uint32_t>(slot);
  }
  throw UnknownNodeError(std::string(op) + ": unknown node id " + std::to_string(id));
}

std::vector<std::uint32_t> KnowledgeTree::resolve_all(const std::vector<NodeId>& ids, const char* op) const {
  std::vector<std::uint32_t> slots;
  slots.reserve(ids.size());
  for (NodeId id : ids) slots.push_back(resolve(id, op));
  return slots;
}

// -------------------------------------------------------------------- lookups

int KnowledgeTree::fastest(const Node& n) { return __builtin_ctz(n.resident); }

std::uint32_t KnowledgeTree::find_child(std::uint32_t parent, const std::string& doc) const {
  auto d = doc_index_.find(doc);
  if (d == doc_index_.end()) return kNil;
  auto c = children_.find(child_key(parent, d->second));
  return c == children_.end() ? kNil : c->second;
}

std::vector<std::uint32_t> KnowledgeTree::walk(const std::string& ns, const std::vector<std::string>& docs) const {
  std::vector<std::uint32_t> path;
  auto it = ns_index_.find(ns);
  if (it == ns_index_.end()) return path;
  std::uint32_t cur = namespaces_[it->second].root;
  for (const std::string& doc : docs) {
    cur = find_child(cur, doc);
    if (cur == kNil) break;
    path.push_back(cur);
  }
  return path;
}

MatchResult KnowledgeTree::describe(const std::vector<std::uint32_t>& path) const {
  MatchResult r;
  for (std::uint32_t s : path) {
    r.node_ids.push_back(id_of(s));
    r.tiers.push_back(tier_at(fastest(nodes_[s])));
    r.tokens.push_back(nodes_[s].tokens);
    r.matched_tokens += nodes_[s].tokens;
  }
  r.matched_docs = static_cast<std::int64_t>(path.size());
  return r;
}

// ------------------------------------------------------- per-node bookkeeping

PolicyInput KnowledgeTree::policy_input(const Node& n) const {
  return PolicyInput{n.frequency, n.tick, n.tokens, n.cost_sum, n.cost_samples};
}

// Puts a node in exactly the heaps of the tiers where it is a candidate.
void KnowledgeTree::sync(std::uint32_t s) {
  const Node& n = nodes_[s];
  if (n.root) return;
  for (int t = 0; t < num_tiers_; ++t) {
    const bool candidate = n.alive && !n.dropped && (n.resident >> t & 1u) && n.pin_count == 0 &&
                           n.children_in[t] == 0;
    if (candidate) heaps_[t].set(s, HeapKey{n.prio[t], n.tick});
    else heaps_[t].erase(s);
  }
}

void KnowledgeTree::save(std::uint32_t s) {
  if (!journal_.active || nodes_[s].journal_epoch == journal_.epoch) return;
  nodes_[s].journal_epoch = journal_.epoch;
  journal_.saved.emplace_back(s, nodes_[s]);
}

// An access: new tick, priorities recomputed in every resident tier.
void KnowledgeTree::refresh(std::uint32_t s) {
  save(s);
  Node& n = nodes_[s];
  n.tick = ++tick_;
  for (int t = 0; t < num_tiers_; ++t)
    if (n.resident >> t & 1u) n.prio[t] = policy_->priority(policy_input(n), clock_[t]);
  sync(s);
}

void KnowledgeTree::pin_path(std::uint32_t s, int delta) {
  for (std::uint32_t x = s; !nodes_[x].root; x = nodes_[x].parent) {
    save(x);
    Node& n = nodes_[x];
    const bool was_pinned = n.pin_count != 0;
    n.pin_count = static_cast<std::uint32_t>(static_cast<std::int64_t>(n.pin_count) + delta);
    if (was_pinned != (n.pin_count != 0)) sync(x);
  }
}

void KnowledgeTree::add_resident(std::uint32_t s, int t) {
  save(s);
  Node& n = nodes_[s];
  n.resident |= static_cast<std::uint8_t>(1u << t);
  used_[t] += n.nbytes;
  n.prio[t] = policy_->priority(policy_input(n), clock_[t]);
  const std::uint32_t p = n.parent;
  save(p);
  ++nodes_[p].children_in[t];
  sync(s);
  sync(p);
}

void KnowledgeTree::remove_resident(std::uint32_t s, int t) {
  save(s);
  Node& n = nodes_[s];
  n.resident &= static_cast<std::uint8_t>(~(1u << t));
  used_[t] -= n.nbytes;
  const std::uint32_t p = n.parent;
  save(p);
  --nodes_[p].children_in[t];
  if (n.resident == 0) n.dropped = true;
  sync(s);
  sync(p);
  if (n.resident == 0) {
    // Inside a transaction the slot stays until commit so rollback can revive it.
    if (journal_.active) journal_.dropped.push_back(s);
    else delete_node(s);
  }
}

// ------------------------------------------------------------------- eviction

bool KnowledgeTree::make_room(int t, std::int64_t need, std::vector<Eviction>& evs) {
  while (capacity_[t] - used_[t] < need) {
    if (heaps_[t].empty()) {
      fail_tier_ = t;
      fail_need_ = need;
      return false;
    }
    if (!evict_one(heaps_[t].top(), t, evs)) return false;
  }
  return true;
}

// Evicts candidate s from tier t: its fastest copy is demoted to the next tier
// (copied only if that tier holds no copy yet, making room there first); a
// copy behind a faster one, or one in the last tier, is dropped.
bool KnowledgeTree::evict_one(std::uint32_t s, int t, std::vector<Eviction>& evs) {
  clock_[t] = std::max(clock_[t], nodes_[s].prio[t]);
  ++evictions_[t];
  const std::int64_t nbytes = nodes_[s].nbytes;
  const NodeId id = id_of(s);
  if (fastest(nodes_[s]) == t && t + 1 < num_tiers_) {
    const int next = t + 1;
    const bool copied = !(nodes_[s].resident >> next & 1u);
    if (copied) {
      if (!make_room(next, nbytes, evs)) return false;
      add_resident(s, next);
    }
    remove_resident(s, t);
    evs.push_back(Eviction{id, tier_at(t), tier_at(next), copied, nbytes});
  } else {
    remove_resident(s, t);
    evs.push_back(Eviction{id, tier_at(t), std::nullopt, false, nbytes});
  }
  return true;
}

// Inside an open transaction: makes room in tier t for `order` (nodes slower
// than t, parents before children, pinned by the caller) and makes each
// resident there as an access. false when room cannot be made.
bool KnowledgeTree::promote_into(const std::vector<std::uint32_t>& order, int t, std::vector<Eviction>& evs) {
  if (order.empty()) return true;
  std::int64_t need = 0;  // callers checked that the total fits the tier
  for (std::uint32_t s : order) need += nodes_[s].nbytes;
  if (!make_room(t, need, evs)) return false;
  for (std::uint32_t s : order) {
    add_resident(s, t);
    refresh(s);
  }
  return true;
}

void KnowledgeTree::begin() {
  journal_.active = true;
  ++journal_.epoch;
  journal_.saved.clear();
  journal_.dropped.clear();
  journal_.used = used_;
  journal_.clock = clock_;
  journal_.evictions = evictions_;
  journal_.tick = tick_;
}

void KnowledgeTree::commit() {
  journal_.active = false;
  for (std::uint32_t s : journal_.dropped) delete_node(s);
  journal_.dropped.clear();
  journal_.saved.clear();
}

void KnowledgeTree::rollback() {
  journal_.active = false;
  for (auto& [s, node] : journal_.saved) nodes_[s] = node;
  used_ = journal_.used;
  clock_ = journal_.clock;
  evictions_ = journal_.evictions;
  tick_ = journal_.tick;
  // Heap membership of untouched nodes is unchanged; re-derive the rest.
  for (auto& entry : journal_.saved) sync(entry.first);
  journal_.saved.clear();
  journal_.dropped.clear();
}

void KnowledgeTree::throw_capacity(const char* op) const {
  const int t = fail_tier_;
  throw CapacityError(std::string(op) + ": cannot make room for " + std::to_string(fail_need_) + " bytes in tier " +
                      quoted(level_name(t)) + " (capacity " + std::to_string(capacity_[t]) +
                      " bytes, " + std::to_string(used_[t]) +
                      " in use): what is left there is locked or an ancestor of a locked node");
}

// ------------------------------------------------------------ node lifecycle

std::uint32_t KnowledgeTree::intern_doc(const std::string& name) {
  auto it = doc_index_.find(name);
  if (it != doc_index_.end()) return it->second;
  const std::uint32_t id = take_index(docs_, free_docs_);
  docs_[id] = DocName{name, kNil, 0};
  doc_index_.emplace(name, id);
  return id;
}

std::uint32_t KnowledgeTree::root_for(const std::string& ns) {
  auto it = ns_index_.find(ns);
  if (it != ns_index_.end()) return namespaces_[it->second].root;
  const std::uint32_t id = take_index(namespaces_, free_namespaces_);
  const std::uint32_t s = new_node(kNil, 0, 0, 0);
  nodes_[s].root = true;
  nodes_[s].ns = id;
  namespaces_[id] = NsName{ns, s};
  ns_index_.emplace(ns, id);
  return s;
}

std::uint32_t KnowledgeTree::new_node(std::uint32_t parent, std::uint32_t doc, std::int64_t tokens,
                                      std::int64_t nbytes) {
  const std::uint32_t s = take_index(nodes_, free_slots_);
  Node& n = nodes_[s];
  n.alive = true;
  n.doc = doc;
  n.tokens = tokens;
  n.nbytes = nbytes;
  n.parent = parent;
  if (parent != kNil) {
    Node& p = nodes_[parent];
    n.ns = p.ns;
    n.next_sibling = p.first_child;
    if (p.first_child != kNil) nodes_[p.first_child].prev_sibling = s;
    p.first_child = s;
    children_.emplace(child_key(parent, doc), s);
    DocName& d = docs_[doc];
    n.next_same_doc = d.first_node;
    if (d.first_node != kNil) nodes_[d.first_node].prev_same_doc = s;
    d.first_node = s;
    ++d.nodes;
    ++num_nodes_;
  }
  return s;
}

// Unlinks a document node; releases its document name with its last node and
// its namespace with the namespace's last document.
void KnowledgeTree::delete_node(std::uint32_t s) {
  const Node n = nodes_[s];
  if (n.prev_sibling != kNil) nodes_[n.prev_sibling].next_sibling = n.next_sibling;
  else nodes_[n.parent].first_child = n.next_sibling;
  if (n.next_sibling != kNil) nodes_[n.next_sibling].prev_sibling = n.prev_sibling;
  children_.erase(child_key(n.parent, n.doc));
  DocName& d = docs_[n.doc];
  if (n.prev_same_doc != kNil) nodes_[n.prev_same_doc].next_same_doc = n.next_same_doc;
  else d.first_node = n.next_same_doc;
  if (n.next_same_doc != kNil) nodes_[n.next_same_doc].prev_same_doc = n.prev_same_doc;
  if (--d.nodes == 0) {
    doc_index_.erase(d.name);
    d = DocName{};
    free_docs_.push_back(n.doc);
  }
  for (int t = 0; t < num_tiers_; ++t) heaps_[t].erase(s);
  release_slot(s);
  --num_nodes_;
  const Node& root = nodes_[n.parent];
  if (root.root && root.first_child == kNil) {
    NsName& name = namespaces_[root.ns];
    ns_index_.erase(name.name);
    name = NsName{};
    free_namespaces_.push_back(root.ns);
    release_slot(n.parent);
  }
}

void KnowledgeTree::release_slot(std::uint32_t s) {
  const std::uint32_t gen = nodes_[s].gen + 1;
  nodes_[s] = Node{};
  nodes_[s].gen = gen;
  free_slots_.push_back(s);
}

std::vector<std::uint32_t> KnowledgeTree::create_path(const std::string& ns, const std::vector<std::string>& docs,
                                                      const std::vector<std::int64_t>& tokens,
                                                      const std::vector<std::int64_t>& bytes,
                                                      const std::vector<std::uint32_t>& prefix, int t) {
  std::uint32_t parent = prefix.empty() ? root_for(ns) : prefix.back();
  std::vector<std::uint32_t> created;
  for (std::size_t i = prefix.size(); i < docs.size(); ++i) {
    const std::uint32_t doc = intern_doc(docs[i]);
    const std::uint32_t s = new_node(parent, doc, tokens[i], bytes[i]);
    add_resident(s, t);
    refresh(s);
    created.push_back(s);
    parent = s;
  }
  return created;
}

// The body of insert() (mu_ held, `prefix` walked and size-checked): promotes
// the prefix nodes slower than t and makes room for the new documents in one
// transaction, then creates them. Fills r; returns the created slots.
std::vector<std::uint32_t> KnowledgeTree::insert_path(const char* op, const std::string& ns,
                                                      const std::vector<std::string>& docs,
                                                      const std::vector<std::int64_t>& tokens,
                                                      const std::vector<std::int64_t>& bytes,
                                                      const std::vector<std::uint32_t>& prefix, int t,
                                                      InsertResult& r) {
  std::vector<std::uint32_t> slow;  // a suffix of the prefix: parents are never slower
  Wide promoted_bytes = 0, wide_new = 0;
  for (std::uint32_t s : prefix) {
    if (fastest(nodes_[s]) > t) {
      slow.push_back(s);
      promoted_bytes += nodes_[s].nbytes;
    }
  }
  for (std::size_t i = prefix.size(); i < docs.size(); ++i) wide_new += bytes[i];
  check_fits(op, t, promoted_bytes + wide_new);
  const auto new_bytes = static_cast<std::int64_t>(wide_new);  // <= capacity now
  std::vector<std::uint32_t> created;
  if (!slow.empty() || new_bytes > 0) {
    // The reused prefix must survive the room-making for itself and its new children.
    if (!prefix.empty()) pin_path(prefix.back(), +1);
    begin();
    if (!promote_into(slow, t, r.evictions) || (new_bytes > 0 && !make_room(t, new_bytes, r.evictions))) {
      rollback();
      if (!prefix.empty()) pin_path(prefix.back(), -1);
      throw_capacity(op);
    }
    commit();
    if (!prefix.empty()) pin_path(prefix.back(), -1);
    for (std::uint32_t s : slow) r.promoted.push_back(id_of(s));
    created = create_path(ns, docs, tokens, bytes, prefix, t);
  }
  for (std::uint32_t s : prefix) r.node_ids.push_back(id_of(s));
  for (std::uint32_t s : created) r.node_ids.push_back(id_of(s));
  r.created.assign(prefix.size(), false);
  r.created.resize(prefix.size() + created.size(), true);
  return created;
}

// record_compute() on resolved slots.
void KnowledgeTree::computed(const std::vector<std::uint32_t>& slots, std::int64_t cached_tokens,
                             std::int64_t new_tokens) {
  const double sample = profile_ ? profile_->cost_per_token(static_cast<double>(cached_tokens),
                                                            static_cast<double>(new_tokens))
                                 : 0.0;
  for (std::uint32_t s : slots) {
    Node& n = nodes_[s];
    if (profile_) {
      n.cost_sum += sample;
      ++n.cost_samples;
    }
    ++n.frequency;
    refresh(s);
  }
}

void KnowledgeTree::record_lookup(const std::vector<std::uint32_t>& prefix, std::uint64_t lookup_tokens) {
  ++lookups_;
  lookup_tokens_ = lookup_tokens > std::numeric_limits<std::uint64_t>::max() - lookup_tokens_
                       ? std::numeric_limits<std::uint64_t>::max()
                       : lookup_tokens_ + lookup_tokens;
  if (prefix.empty()) return;
  ++hits_;
  for (std::uint32_t s : prefix) hit_tokens_ += static_cast<std::uint64_t>(nodes_[s].tokens);
}

// ------------------------------------------------------------ public methods

MatchResult KnowledgeTree::match(const std::string& ns, const std::vector<std::string>& doc_ids,
                                 const std::optional<std::vector<std::int64_t>>& doc_tokens, bool lock) {
  validate_docs("match", ns, doc_ids);
  std::int64_t lookup_tokens = 0;
  if (doc_tokens) {
    validate_sizes("match", "doc_tokens", doc_ids.size(), *doc_tokens);
    for (std::int64_t v : *doc_tokens) lookup_tokens = sat_add(lookup_tokens, v);
  }
  std::lock_guard<std::mutex> guard(mu_);
  const std::vector<std::uint32_t> path = walk(ns, doc_ids);
  record_lookup(path, static_cast<std::uint64_t>(lookup_tokens));
  if (lock)
    for (std::uint32_t s : path) lock_slot(s);
  return describe(path);
}

MatchResult KnowledgeTree::peek(const std::string& ns, const std::vector<std::string>& doc_ids) const {
  validate_docs("peek", ns, doc_ids);
  std::lock_guard<std::mutex> guard(mu_);
  return describe(walk(ns, doc_ids));
}

std::vector<std::string> KnowledgeTree::best_order(const std::string& ns, const std::vector<std::string>& doc_ids,
                                                   std::size_t fixed) const {
  validate_docs("best_order", ns, doc_ids);
  if (fixed > doc_ids.size()) {
    throw std::invalid_argument("best_order: fixed=" + std::to_string(fixed) + " exceeds len(doc_ids)=" +
                                std::to_string(doc_ids.size()));
  }
  std::lock_guard<std::mutex> guard(mu_);
  const std::vector<std::uint32_t> head = walk(ns, {doc_ids.begin(), doc_ids.begin() + fixed});
  if (head.size() < fixed || (fixed == 0 && !ns_index_.count(ns))) return doc_ids;
  const std::uint32_t start = fixed ? head.back() : namespaces_[ns_index_.at(ns)].root;
  // Depth-first over cached children that are among the free documents. The
  // search is bounded: a tree holding many orders of one set stops at the best
  // path found within the budget (still a cached path, never a wrong one).
  constexpr int kBudget = 4096;
  int visits = 0;
  std::vector<std::size_t> path, best;
  std::int64_t best_tokens = 0;
  std::vector<bool> used(doc_ids.size(), false);
  auto dfs = [&](auto&& self, std::uint32_t node, std::int64_t tokens) -> void {
    if (tokens > best_tokens) {
      best_tokens = tokens;
      best = path;
    }
    for (std::size_t j = fixed; j < doc_ids.size() && visits < kBudget; ++j) {
      if (used[j]) continue;
      const std::uint32_t child = find_child(node, doc_ids[j]);
      if (child == kNil) continue;
      ++visits;
      used[j] = true;
      path.push_back(j);
      self(self, child, tokens + nodes_[child].tokens);
      path.pop_back();
      used[j] = false;
    }
  };
  dfs(dfs, start, 0);
  std::vector<std::string> order(doc_ids.begin(), doc_ids.begin() + fixed);
  std::vector<bool> taken(doc_ids.size(), false);
  for (std::size_t j : best) {
    order.push_back(doc_ids[j]);
    taken[j] = true;
  }
  for (std::size_t j = fixed; j < doc_ids.size(); ++j)
    if (!taken[j]) order.push_back(doc_ids[j]);
  return order;
}

InsertResult KnowledgeTree::insert(const std::string& ns, const std::vector<std::string>& doc_ids,
                                   const std::vector<std::int64_t>& doc_tokens,
                                   const std::vector<std::int64_t>& doc_bytes, Tier tier, bool lock) {
  validate_request("insert", ns, doc_ids, doc_tokens, doc_bytes);
  std::lock_guard<std::mutex> guard(mu_);
  const int t = level_of(tier, "insert");
  const std::vector<std::uint32_t> prefix = checked_prefix("insert", ns, doc_ids, doc_tokens, doc_bytes);
  InsertResult r;
  const std::vector<std::uint32_t> created = insert_path("insert", ns, doc_ids, doc_tokens, doc_bytes, prefix, t, r);
  if (lock) {
    for (const auto* part : {&prefix, &created}) {
      for (std::uint32_t s : *part) lock_slot(s);
    }
  }
  return r;
}

void KnowledgeTree::lock(const std::vector<NodeId>& ids) {
  std::lock_guard<std::mutex> guard(mu_);
  for (std::uint32_t s : resolve_all(ids, "lock")) lock_slot(s);
}

void KnowledgeTree::lock_slot(std::uint32_t s) {
  ++nodes_[s].lock_count;
  pin_path(s, +1);
}

void KnowledgeTree::unlock(const std::vector<NodeId>& ids) {
  std::lock_guard<std::mutex> guard(mu_);
  std::vector<std::uint32_t> slots = resolve_all(ids, "unlock");
  std::vector<std::uint32_t> sorted = slots;
  std::sort(sorted.begin(), sorted.end());
  for (std::size_t i = 0; i < sorted.size();) {
    std::size_t j = i;
    while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
    const Node& n = nodes_[sorted[i]];
    if (n.lock_count < j - i) {
      throw std::invalid_argument(
          "unlock: node " + std::to_string(id_of(sorted[i])) + " (document " + quoted(docs_[n.doc].name) + ") " +
          (n.lock_count == 0 ? std::string("is not locked")
                             : "is locked " + std::to_string(n.lock_count) + " time(s) but unlocked " +
                                   std::to_string(j - i) + " times"));
    }
    i = j;
  }
  for (std::uint32_t s : slots) {
    --nodes_[s].lock_count;
    pin_path(s, -1);
  }
}

void KnowledgeTree::touch(const std::vector<NodeId>& ids) {
  std::lock_guard<std::mutex> guard(mu_);
  for (std::uint32_t s : resolve_all(ids, "touch")) {
    ++nodes_[s].frequency;
    refresh(s);
  }
}

void KnowledgeTree::record_compute(const std::vector<NodeId>& ids, std::int64_t cached_tokens,
                                   std::int64_t new_tokens) {
  if (cached_tokens < 0) {
    throw std::invalid_argument("record_compute: cached_tokens must be >= 0 (got " + std::to_string(cached_tokens) + ")");
  }
  if (new_tokens <= 0) {
    throw std::invalid_argument("record_compute: new_tokens must be > 0 (got " + std::to_string(new_tokens) + ")");
  }
  std::lock_guard<std::mutex> guard(mu_);
  computed(resolve_all(ids, "record_compute"), cached_tokens, new_tokens);
}

std::vector<Eviction> KnowledgeTree::evict(Tier tier, std::int64_t nbytes) {
  if (nbytes <= 0) throw std::invalid_argument("evict: nbytes must be > 0 (got " + std::to_string(nbytes) + ")");
  std::lock_guard<std::mutex> guard(mu_);
  const int t = level_of(tier, "evict");
  std::vector<Eviction> evs;
  begin();
  for (std::int64_t freed = 0; freed < nbytes;) {
    if (heaps_[t].empty()) {
      fail_tier_ = t;
      fail_need_ = nbytes;
      rollback();
      throw_capacity("evict");
    }
    const std::uint32_t v = heaps_[t].top();
    freed += nodes_[v].nbytes;
    if (!evict_one(v, t, evs)) {
      rollback();
      throw_capacity("evict");
    }
  }
  commit();
  return evs;
}

std::vector<Eviction> KnowledgeTree::promote(const std::vector<NodeId>& ids, Tier tier) {
  std::lock_guard<std::mutex> guard(mu_);
  const int t = level_of(tier, "promote");
  std::vector<std::uint32_t> order;
  std::unordered_set<std::uint32_t> listed;
  Wide need = 0;
  for (std::uint32_t s : resolve_all(ids, "promote")) {
    const Node& n = nodes_[s];
    if (fastest(n) <= t || !listed.insert(s).second) continue;
    const Node& p = nodes_[n.parent];
    if (!p.root && fastest(p) > t && !listed.count(n.parent)) {
      throw std::invalid_argument("promote: node " + std::to_string(id_of(s)) + " (document " +
                                  quoted(docs_[n.doc].name) + ") has its parent in " +
                                  quoted(level_name(fastest(p))) + ", slower than " +
                                  quoted(tier_name(tier)) + ": list its ancestors before it");
    }
    order.push_back(s);
    need += n.nbytes;
  }
  std::vector<Eviction> evs;
  if (order.empty()) return evs;
  check_fits("promote", t, need);
  for (std::uint32_t s : order) pin_path(s, +1);
  begin();
  const bool ok = promote_into(order, t, evs);
  if (ok) commit();
  else rollback();
  for (std::uint32_t s : order) pin_path(s, -1);
  if (!ok) throw_capacity("promote");
  return evs;
}

std::vector<Eviction> KnowledgeTree::remove(NodeId id) {
  std::lock_guard<std::mutex> guard(mu_);
  const std::uint32_t s = resolve(id, "remove");
  if (nodes_[s].pin_count != 0) {
    throw std::invalid_argument("remove: node " + std::to_string(id) + " (document " +
                                quoted(docs_[nodes_[s].doc].name) + ") or a node below it is locked");
  }
  std::vector<Eviction> evs;
  remove_subtree(s, evs);
  return evs;
}

RemoveResult KnowledgeTree::remove_document(const std::string& doc) {
  if (doc.empty()) throw std::invalid_argument("remove_document: doc_id must be a non-empty string");
  std::lock_guard<std::mutex> guard(mu_);
  RemoveResult r;
  auto it = doc_index_.find(doc);
  if (it == doc_index_.end()) return r;
  // A path holds a document once, so no node of it lies below another: each
  // subtree removal leaves the others in place.
  std::vector<std::uint32_t> slots;
  for (std::uint32_t s = docs_[it->second].first_node; s != kNil; s = nodes_[s].next_same_doc) slots.push_back(s);
  std::sort(slots.begin(), slots.end(), [&](std::uint32_t a, std::uint32_t b) { return id_of(a) < id_of(b); });
  for (std::uint32_t s : slots) {
    if (nodes_[s].pin_count != 0) ++r.kept_locked;
    else remove_subtree(s, r.evictions);
  }
  return r;
}

std::int64_t KnowledgeTree::document_nodes(const std::string& doc) const {
  std::lock_guard<std::mutex> guard(mu_);
  auto it = doc_index_.find(doc);
  return it == doc_index_.end() ? 0 : docs_[it->second].nodes;
}

// Drops an unpinned node and its subtree, children before parents so that
// every drop is of a leaf; one event per dropped copy.
void KnowledgeTree::remove_subtree(std::uint32_t s, std::vector<Eviction>& evs) {
  std::vector<std::uint32_t> order, stack{s};
  while (!stack.empty()) {
    const std::uint32_t x = stack.back();
    stack.pop_back();
    order.push_back(x);
    for (std::uint32_t c = nodes_[x].first_child; c != kNil; c = nodes_[c].next_sibling) stack.push_back(c);
  }
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    const NodeId xid = id_of(*it);
    for (int t = 0; t < num_tiers_; ++t) {
      if (!(nodes_[*it].resident >> t & 1u)) continue;
      evs.push_back(Eviction{xid, tier_at(t), std::nullopt, false, nodes_[*it].nbytes});
      remove_resident(*it, t);
    }
  }
}

std::vector<Eviction> KnowledgeTree::set_capacity(Tier tier, std::int64_t nbytes) {
  if (nbytes <= 0) {
    throw std::invalid_argument("set_capacity: nbytes must be > 0 (got " + std::to_string(nbytes) + ")");
  }
  std::lock_guard<std::mutex> guard(mu_);
  const int t = level_of(tier, "set_capacity");
  const std::int64_t old = capacity_[t];
  capacity_[t] = nbytes;
  std::vector<Eviction> evs;
  begin();
  if (!make_room(t, 0, evs)) {
    rollback();
    // Report against the capacity the caller asked for, then restore it.
    const std::string msg = "set_capacity: the locked set needs more than " + std::to_string(nbytes) +
                            " bytes in tier " + quoted(level_name(fail_tier_));
    capacity_[t] = old;
    throw CapacityError(msg + " (in use " + std::to_string(used_[fail_tier_]) +
                        " bytes; what is left after eviction is locked or an ancestor of a locked node)");
  }
  commit();
  return evs;
}

AccessResult KnowledgeTree::access(const std::string& ns, const std::vector<std::string>& doc_ids,
                                   const std::vector<std::int64_t>& doc_tokens,
                                   const std::vector<std::int64_t>& doc_bytes, Tier tier, bool lock) {
  validate_request("access", ns, doc_ids, doc_tokens, doc_bytes);
  std::lock_guard<std::mutex> guard(mu_);
  const int t = level_of(tier, "access");
  const std::vector<std::uint32_t> prefix = checked_prefix("access", ns, doc_ids, doc_tokens, doc_bytes);

  AccessResult r;
  for (std::uint32_t s : prefix) {
    r.hit_tiers.push_back(tier_at(fastest(nodes_[s])));
    r.matched_tokens += nodes_[s].tokens;
  }
  r.matched_docs = static_cast<std::int64_t>(prefix.size());
  InsertResult ins;
  const std::vector<std::uint32_t> created =
      insert_path("access", ns, doc_ids, doc_tokens, doc_bytes, prefix, t, ins);
  r.node_ids = std::move(ins.node_ids);
  r.created = std::move(ins.created);
  r.promoted = std::move(ins.promoted);
  r.evictions = std::move(ins.evictions);
  for (std::uint32_t s : prefix) {
    ++nodes_[s].frequency;
    refresh(s);
  }
  if (!created.empty()) {
    std::int64_t new_tokens = 0;
    for (std::size_t i = prefix.size(); i < doc_ids.size(); ++i) new_tokens = sat_add(new_tokens, doc_tokens[i]);
    computed(created, r.matched_tokens, new_tokens);
  }
  if (lock) {
    for (const auto* part : {&prefix, &created}) {
      for (std::uint32_t s : *part) lock_slot(s);
    }
  }
  std::int64_t lookup_tokens = 0;
  for (std::int64_t v : doc_tokens) lookup_tokens = sat_add(lookup_tokens, v);
  record_lookup(prefix, static_cast<std::uint64_t>(lookup_tokens));
  return r;
}

// ----------------------------------------------------------------- inspection

NodeInfo KnowledgeTree::node(NodeId id) const {
  std::lock_guard<std::mutex> guard(mu_);
  const std::uint32_t s = resolve(id, "node");
  const Node& n = nodes_[s];
  NodeInfo info;
  info.node_id = id;
  info.doc_id = docs_[n.doc].name;
  info.ns = namespaces_[n.ns].name;
  if (!nodes_[n.parent].root) info.parent = id_of(n.parent);
  info.tokens = n.tokens;
  info.nbytes = n.nbytes;
  info.tier = tier_at(fastest(n));
  for (int t = 0; t < num_tiers_; ++t) {
    if (!(n.resident >> t & 1u)) continue;
    info.resident_tiers.push_back(tier_at(t));
    info.priorities.push_back(n.prio[t]);
  }
  info.lock_count = n.lock_count;
  info.frequency = n.frequency;
  info.priority = n.prio[fastest(n)];
  info.cost_per_token = n.cost_samples ? n.cost_sum / static_cast<double>(n.cost_samples) : 0.0;
  info.cost_samples = n.cost_samples;
  info.last_access = n.tick;
  for (std::uint32_t c = n.first_child; c != kNil; c = nodes_[c].next_sibling) info.children.push_back(id_of(c));
  std::sort(info.children.begin(), info.children.end());
  return info;
}

std::vector<Tier> KnowledgeTree::tiers() const {
  return std::vector<Tier>(level_tier_.begin(), level_tier_.begin() + num_tiers_);
}

std::vector<NodeId> KnowledgeTree::node_ids() const {
  std::lock_guard<std::mutex> guard(mu_);
  std::vector<NodeId> ids;
  ids.reserve(static_cast<std::size_t>(num_nodes_));
  for (std::uint32_t s = 0; s < nodes_.size(); ++s)
    if (nodes_[s].alive && !nodes_[s].root) ids.push_back(id_of(s));
  std::sort(ids.begin(), ids.end());
  return ids;
}

TreeStats KnowledgeTree::stats() const {
  std::lock_guard<std::mutex> guard(mu_);
  TreeStats st;
  st.num_nodes = num_nodes_;
  st.interned_names = static_cast<std::int64_t>(doc_index_.size() + ns_index_.size());
  st.tiers.assign(level_tier_.begin(), level_tier_.begin() + num_tiers_);
  st.used_bytes.assign(used_.begin(), used_.begin() + num_tiers_);
  st.capacity_bytes.assign(capacity_.begin(), capacity_.begin() + num_tiers_);
  st.evictions.assign(evictions_.begin(), evictions_.begin() + num_tiers_);
  st.clock.assign(clock_.begin(), clock_.begin() + num_tiers_);
  st.lookups = lookups_;
  st.hits = hits_;
  st.hit_tokens = hit_tokens_;
  st.lookup_tokens = lookup_tokens_;
  return st;
}

std::vector<std::string> KnowledgeTree::check_invariants() const {
  std::lock_guard<std::mutex> guard(mu_);
  std::vector<std::string> bad;
  auto fail = [&](std::uint32_t s, const std::string& what) {
    bad.push_back("node slot " + std::to_string(s) + ": " + what);
  };
  std::array<std::int64_t, kMaxTiers> used{};
  std::vector<std::array<std::uint32_t, kMaxTiers>> children_in(nodes_.size());
  std::vector<std::uint32_t> pins(nodes_.size(), 0);
  std::int64_t count = 0;
  for (std::uint32_t s = 0; s < nodes_.size(); ++s) {
    const Node& n = nodes_[s];
    if (!n.alive || n.root) continue;
    ++count;
    if (n.dropped) fail(s, "left dropped outside a transaction");
    if (n.resident == 0 || n.resident >> num_tiers_) fail(s, "resident set is empty or names an unconfigured tier");
    const Node& p = nodes_[n.parent];
    if (!p.alive) { fail(s, "parent is not alive"); continue; }
    if (!p.root && n.resident && p.resident && fastest(p) > fastest(n)) fail(s, "parent is in a slower tier");
    auto c = children_.find(child_key(n.parent, n.doc));
    if (c == children_.end() || c->second != s) fail(s, "missing from the (parent, doc) index");
    for (int t = 0; t < num_tiers_; ++t) {
      if (!(n.resident >> t & 1u)) continue;
      used[t] += n.nbytes;
      ++children_in[n.parent][t];
    }
    if (n.lock_count)
      for (std::uint32_t x = s; !nodes_[x].root; x = nodes_[x].parent) pins[x] += n.lock_count;
  }
  if (count != num_nodes_) bad.push_back("num_nodes " + std::to_string(num_nodes_) + " != " + std::to_string(count));
  // Names: each interned document lists exactly its live nodes; each namespace has a root with children.
  std::int64_t listed = 0;
  for (const auto& [name, id] : doc_index_) {
    const DocName& d = docs_[id];
    std::uint32_t k = 0;
    for (std::uint32_t x = d.first_node; x != kNil && k <= d.nodes; x = nodes_[x].next_same_doc, ++k) {
      if (!nodes_[x].alive || nodes_[x].doc != id) bad.push_back("document " + quoted(name) + " lists a foreign node");
    }
    if (d.name != name || k != d.nodes || d.nodes == 0) bad.push_back("document " + quoted(name) + ": node list is stale");
    listed += k;
  }
  if (listed != count) bad.push_back("document node lists hold " + std::to_string(listed) + " of " + std::to_string(count) + " nodes");
  for (const auto& [name, id] : ns_index_) {
    const std::uint32_t r = namespaces_[id].root;
    if (r == kNil || !nodes_[r].alive || !nodes_[r].root || nodes_[r].first_child == kNil)
      bad.push_back("namespace " + quoted(name) + " has no live root with documents");
  }
  if (children_.size() != static_cast<std::size_t>(count)) bad.push_back("(parent, doc) index size mismatch");
  for (int t = 0; t < num_tiers_; ++t) {
    const std::string name = level_name(t);
    if (used[t] != used_[t]) {
      bad.push_back("used bytes of " + name + ": " + std::to_string(used_[t]) + " != sum over resident nodes " +
                    std::to_string(used[t]));
    }
    if (used_[t] > capacity_[t]) bad.push_back("used bytes of " + name + " exceed its capacity");
    if (!heaps_[t].valid()) bad.push_back("heap of " + name + " is out of order");
  }
  for (std::uint32_t s = 0; s < nodes_.size(); ++s) {
    const Node& n = nodes_[s];
    if (!n.alive) continue;
    if (n.children_in != children_in[s]) fail(s, "per-tier child counts are stale");
    if (n.root) continue;
    if (n.pin_count != pins[s]) fail(s, "pin count is stale");
    for (int t = 0; t < num_tiers_; ++t) {
      const bool candidate = (n.resident >> t & 1u) && pins[s] == 0 && children_in[s][t] == 0;
      if (candidate != heaps_[t].contains(s)) {
        fail(s, std::string(candidate ? "missing from" : "wrongly in") + " the eviction heap of " +
                    level_name(t));
      } else if (candidate && (heaps_[t].key(s).prio != n.prio[t] || heaps_[t].key(s).tick != n.tick)) {
        fail(s, std::string("stale heap key in ") + level_name(t));
      }
    }
  }
  return bad;
}

}  // namespace hyperrag
