// KnowledgeTree invariants 1, 2, 4, 5 (accounting) and 6 (bad input).
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <random>
#include <set>

#include "hyperrag/errors.h"
#include "hyperrag/knowledge_tree.h"
#include "tree_test_util.h"

using namespace hyperrag;
using namespace hyperrag::testing;
using Docs = std::vector<std::string>;
using Ints = std::vector<std::int64_t>;

namespace {

std::vector<NodeId> ids_of(const std::vector<Eviction>& evs) {
  std::vector<NodeId> out;
  for (const Eviction& e : evs) out.push_back(e.node_id);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- invariant 1

TEST(TreePaths, OrderAndNamespaceMakeDistinctNodes) {
  KnowledgeTree t(caps(1 << 20), "lru");
  auto ab = t.insert("m", {"a", "b"}, {10, 20}, {100, 200}).node_ids;
  auto ba = t.insert("m", {"b", "a"}, {20, 10}, {200, 100}).node_ids;
  auto other = t.insert("m2", {"a", "b"}, {10, 20}, {100, 200}).node_ids;
  EXPECT_EQ(t.stats().num_nodes, 6);
  std::set<NodeId> all(ab.begin(), ab.end());
  all.insert(ba.begin(), ba.end());
  all.insert(other.begin(), other.end());
  EXPECT_EQ(all.size(), 6u);
  EXPECT_EQ(t.node(ab[1]).doc_id, "b");
  EXPECT_EQ(t.node(ab[1]).parent, ab[0]);
  EXPECT_EQ(t.node(ba[1]).doc_id, "a");
  EXPECT_EQ(t.node(other[0]).ns, "m2");

  MatchResult m = t.match("m", {"a", "b", "c"});
  EXPECT_EQ(m.node_ids, ab);
  EXPECT_EQ(m.matched_docs, 2);
  EXPECT_EQ(m.matched_tokens, 30);
  EXPECT_EQ(t.match("m", {"b"}).node_ids, (std::vector<NodeId>{ba[0]}));
  EXPECT_EQ(t.match("m", {"c", "a"}).matched_docs, 0);
  EXPECT_EQ(t.match("nope", {"a"}).matched_docs, 0);
  TreeStats s = t.stats();
  EXPECT_EQ(s.lookups, 4u);
  EXPECT_EQ(s.hits, 2u);
  EXPECT_EQ(s.hit_tokens, 50u);
  EXPECT_INVARIANTS(t);
}

TEST(TreePaths, InsertReusesPrefixAndRejectsSizeMismatch) {
  KnowledgeTree t(caps(1 << 20), "lru");
  auto first = t.insert("m", {"a", "b"}, {10, 20}, {100, 200});
  auto second = t.insert("m", {"a", "b", "c"}, {10, 20, 30}, {100, 200, 300});
  EXPECT_EQ(second.created, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(std::vector<NodeId>(second.node_ids.begin(), second.node_ids.begin() + 2), first.node_ids);
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.insert("m", {"a", "x"}, {11, 5}, {100, 50}), std::invalid_argument);
  EXPECT_THROW(t.insert("m", {"a", "x"}, {10, 5}, {101, 50}), std::invalid_argument);
  expect_same(before, snapshot(t));
}

// ---------------------------------------------------------------- invariant 2

TEST(TreeEviction, OnlyUnlockedLeavesAndParentsAfterTheirLastChild) {
  // gpu only: an evicted node is dropped from the tree.
  KnowledgeTree t(caps(1000), "lru");
  auto abc = t.insert("m", {"a", "b", "c"}, {1, 1, 1}, {100, 100, 100}).node_ids;
  auto abd = t.insert("m", {"a", "b", "d"}, {1, 1, 1}, {100, 100, 100}).node_ids;
  auto e = t.insert("m", {"e"}, {1}, {100}).node_ids;
  // LRU order of ticks: a, b, c, d, e. The oldest leaf is c, not a or b.
  auto evs = t.evict(Tier::kGpu, 1);
  EXPECT_EQ(ids_of(evs), (std::vector<NodeId>{abc[2]}));
  EXPECT_FALSE(evs[0].to.has_value());
  // b still has child d: the next victim is d, then b (now a leaf), then a.
  evs = t.evict(Tier::kGpu, 300);
  EXPECT_EQ(ids_of(evs), (std::vector<NodeId>{abd[2], abd[1], abd[0]}));
  EXPECT_EQ(t.stats().num_nodes, 1);
  EXPECT_EQ(t.stats().used_bytes[0], 100);
  EXPECT_THROW(t.node(abc[0]), UnknownNodeError);
  EXPECT_EQ(t.node(e[0]).doc_id, "e");
  EXPECT_INVARIANTS(t);
}

TEST(TreeEviction, LockedNodeAndItsAncestorsAreNeverEvicted) {
  KnowledgeTree t(caps(500), "lru");
  auto ab = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}).node_ids;
  auto c = t.insert("m", {"c"}, {1}, {100}).node_ids;
  t.lock({ab[1]});  // protects b and its ancestor a
  auto evs = t.evict(Tier::kGpu, 100);
  EXPECT_EQ(ids_of(evs), (std::vector<NodeId>{c[0]}));
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.evict(Tier::kGpu, 1), CapacityError);
  expect_same(before, snapshot(t));
  // 300 bytes free, 200 locked: a 400-byte insert cannot fit.
  EXPECT_THROW(t.insert("m", {"x"}, {1}, {400}), CapacityError);
  expect_same(before, snapshot(t));
  t.unlock({ab[1]});
  EXPECT_EQ(t.insert("m", {"x"}, {1}, {400}).evictions.size(), 1u);  // b goes, a stays (100 + 400 = 500)
  EXPECT_INVARIANTS(t);
}

TEST(TreeEviction, DemotionKeepsParentsInFasterOrSameTier) {
  KnowledgeTree t(caps(1000, 3000, 6000), "lru");
  std::mt19937 rng(3);
  for (int i = 0; i < 400; ++i) {
    Docs docs;
    Ints tokens, bytes;
    for (int k = 0; k < 3; ++k) {
      std::string d = "d" + std::to_string(rng() % 12);
      if (std::find(docs.begin(), docs.end(), d) != docs.end()) continue;
      docs.push_back(d);
      tokens.push_back(std::stoll(d.substr(1)) + 1);
      bytes.push_back(100 + 10 * std::stoll(d.substr(1)));
    }
    t.access("m", docs, tokens, bytes);
    for (NodeId id : t.node_ids()) {
      NodeInfo n = t.node(id);
      if (n.parent) ASSERT_LE(static_cast<int>(t.node(*n.parent).tier), static_cast<int>(n.tier));
    }
  }
  TreeStats s = t.stats();
  EXPECT_GT(s.evictions[0], 0u);
  EXPECT_GT(s.evictions[1], 0u);  // the cascade reached host and remote
  EXPECT_GT(s.evictions[2], 0u);
  EXPECT_INVARIANTS(t);
}

// ---------------------------------------------------------------- invariant 4

TEST(TreeSwap, FirstDemotionCopiesLaterOnesOnlyFreeGpu) {
  KnowledgeTree t(caps(100, 1000), "lru");
  NodeId a = t.insert("m", {"a"}, {1}, {100}).node_ids[0];
  auto evs = t.insert("m", {"b"}, {1}, {100}).evictions;  // a: gpu -> host, copied
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].node_id, a);
  EXPECT_EQ(evs[0].from, Tier::kGpu);
  EXPECT_EQ(evs[0].to, Tier::kHost);
  EXPECT_TRUE(evs[0].copied);
  EXPECT_EQ(t.stats().used_bytes, (std::vector<std::int64_t>{100, 100}));

  evs = t.promote({a}, Tier::kGpu);  // b: gpu -> host (copied); a keeps its host copy
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_TRUE(evs[0].copied);
  EXPECT_EQ(t.node(a).resident_tiers, (std::vector<Tier>{Tier::kGpu, Tier::kHost}));
  EXPECT_EQ(t.stats().used_bytes, (std::vector<std::int64_t>{100, 200}));

  evs = t.evict(Tier::kGpu, 1);  // a again: the host copy is still there
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].node_id, a);
  EXPECT_EQ(evs[0].to, Tier::kHost);
  EXPECT_FALSE(evs[0].copied);
  EXPECT_EQ(t.stats().used_bytes, (std::vector<std::int64_t>{0, 200}));
  EXPECT_INVARIANTS(t);
}

TEST(TreeSwap, HostCopyOfAGpuNodeCanBeDroppedAlone) {
  KnowledgeTree t(caps(200, 200), "lru");
  NodeId a = t.insert("m", {"a"}, {1}, {100}).node_ids[0];
  t.evict(Tier::kGpu, 1);
  t.promote({a});  // resident in gpu and host
  t.insert("m", {"b"}, {1}, {100}, Tier::kHost);
  // host is full (a's copy + b); evicting 100 host bytes drops the oldest
  // candidate there, a's copy, which leaves a in gpu.
  auto evs = t.evict(Tier::kHost, 100);
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].node_id, a);
  EXPECT_FALSE(evs[0].to.has_value());
  EXPECT_EQ(t.node(a).resident_tiers, (std::vector<Tier>{Tier::kGpu}));
  EXPECT_INVARIANTS(t);
}

// ------------------------------------------------------- rollback (inv. 5, 6)

TEST(TreeRollback, CascadeFailureLeavesTreeUnchanged) {
  KnowledgeTree t(caps(200, 200), "lru");
  NodeId h1 = t.insert("m", {"h1"}, {1}, {100}, Tier::kHost).node_ids[0];
  NodeId h2 = t.insert("m", {"h2"}, {1}, {100}, Tier::kHost).node_ids[0];
  t.lock({h1, h2});  // host is full of locked nodes
  t.insert("m", {"g"}, {1}, {150});
  t.match("m", {"g"});
  const Snapshot before = snapshot(t);
  // Room in gpu needs g demoted, which needs room in host: impossible.
  try {
    t.insert("m", {"x"}, {1}, {100});
    FAIL() << "expected CapacityError";
  } catch (const CapacityError& e) {
    EXPECT_NE(std::string(e.what()).find("'host'"), std::string::npos) << e.what();
  }
  expect_same(before, snapshot(t));
  EXPECT_INVARIANTS(t);
  EXPECT_THROW(t.set_capacity(Tier::kHost, 150), CapacityError);
  expect_same(before, snapshot(t));
}

TEST(TreeRollback, PartialEvictionsAreUndone) {
  // Three unlocked leaves then one locked: asking for all four evicts three
  // before failing; the tree must come back exactly, clocks included.
  KnowledgeTree t(caps(400, 400), "pgdsf", test_profile());
  std::vector<NodeId> ids;
  for (const char* d : {"a", "b", "c", "d"}) {
    ids.push_back(t.insert("m", {d}, {64}, {100}).node_ids[0]);
    t.record_compute({ids.back()}, 0, 64);
  }
  t.lock({ids[3]});
  t.insert("m", {"h"}, {64}, {350}, Tier::kHost);
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.evict(Tier::kGpu, 400), CapacityError);
  expect_same(before, snapshot(t));
  EXPECT_INVARIANTS(t);
  // A feasible request still works afterwards.
  EXPECT_EQ(t.evict(Tier::kGpu, 50).size(), 2u);  // a -> host forces h out of host first
  EXPECT_INVARIANTS(t);
}

TEST(TreeAccounting, ExactAfterRandomOperations) {
  KnowledgeTree t(caps(3000, 6000, 9000), "pgdsf", test_profile());
  std::mt19937 rng(11);
  std::vector<NodeId> locked;
  for (int step = 0; step < 3000; ++step) {
    const int op = static_cast<int>(rng() % 8);
    std::vector<NodeId> all = t.node_ids();
    try {
      if (op <= 2) {
        Docs docs;
        Ints tok, bytes;
        for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k) {
          int d = static_cast<int>(rng() % 20);
          std::string name = "d" + std::to_string(d);
          if (std::find(docs.begin(), docs.end(), name) != docs.end()) continue;
          docs.push_back(name);
          tok.push_back(64 + 16 * d);
          bytes.push_back(200 + 37 * d);
        }
        if (op == 0) t.access("m", docs, tok, bytes, static_cast<Tier>(rng() % 3));
        else t.insert("m", docs, tok, bytes, static_cast<Tier>(rng() % 3));
      } else if (op == 3 && !all.empty()) {
        NodeId id = all[rng() % all.size()];
        t.lock({id});
        locked.push_back(id);
      } else if (op == 4 && !locked.empty()) {
        t.unlock({locked.back()});
        locked.pop_back();
      } else if (op == 5) {
        t.evict(static_cast<Tier>(rng() % 3), 1 + rng() % 2000);
      } else if (op == 6 && !all.empty()) {
        t.promote({all[rng() % all.size()]}, static_cast<Tier>(rng() % 2));
      } else if (op == 7 && !all.empty()) {
        t.remove(all[rng() % all.size()]);
      }
    } catch (const CapacityError&) {
    } catch (const std::invalid_argument&) {  // e.g. removing a locked node, parent not promoted
    }
    const auto problems = t.check_invariants();
    ASSERT_TRUE(problems.empty()) << "step " << step << ": " << ::testing::PrintToString(problems);
  }
}

TEST(TreeRemove, DropsSubtreeAndReportsEveryCopy) {
  KnowledgeTree t(caps(1000, 1000), "lru");
  auto abc = t.insert("m", {"a", "b", "c"}, {1, 1, 1}, {100, 100, 100}).node_ids;
  t.evict(Tier::kGpu, 100);             // c -> host
  t.promote({abc[2]});                  // c in gpu + host
  t.insert("m", {"z"}, {1}, {100});
  t.lock({abc[2]});  // c, below a and b, is locked
  EXPECT_THROW(t.remove(abc[0]), std::invalid_argument);
  EXPECT_THROW(t.remove(abc[1]), std::invalid_argument);
  t.unlock({abc[2]});
  auto evs = t.remove(abc[1]);
  EXPECT_EQ(evs.size(), 3u);  // b (gpu), c (gpu), c (host)
  EXPECT_EQ(t.stats().num_nodes, 2);
  EXPECT_EQ(t.stats().used_bytes, (std::vector<std::int64_t>{200, 0}));
  EXPECT_THROW(t.node(abc[2]), UnknownNodeError);
  // The freed slots are reused under new ids: the stale id stays unknown.
  NodeId fresh = t.insert("m", {"q"}, {1}, {100}).node_ids[0];
  EXPECT_NE(fresh, abc[1]);
  EXPECT_NE(fresh, abc[2]);
  EXPECT_THROW(t.touch({abc[1]}), UnknownNodeError);
  EXPECT_INVARIANTS(t);
}

TEST(TreePromote, ParentsMustBeListedFirst) {
  KnowledgeTree t(caps(1000, 1000), "lru");
  auto ab = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}).node_ids;
  t.evict(Tier::kGpu, 200);  // both to host
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.promote({ab[1]}), std::invalid_argument);
  expect_same(before, snapshot(t));
  EXPECT_TRUE(t.promote({ab[0], ab[1]}).empty());
  EXPECT_EQ(t.node(ab[1]).tier, Tier::kGpu);
  EXPECT_INVARIANTS(t);
}

TEST(TreeInsert, PromotesADemotedPrefixLikePromoteThenInsert) {
  for (const char* policy : {"pgdsf", "lru"}) {
    KnowledgeTree t(caps(300, 1000), policy, test_profile());
    KnowledgeTree calls(caps(300, 1000), policy, test_profile());
    for (KnowledgeTree* x : {&t, &calls}) {
      x->insert("m", {"a", "b"}, {64, 64}, {100, 100});
      x->evict(Tier::kGpu, 200);  // b then a: gpu -> host
      x->insert("m", {"x"}, {64}, {200});
    }
    const auto ab = t.match("m", {"a", "b"}).node_ids;
    calls.match("m", {"a", "b"});
    ASSERT_EQ(t.node(ab[0]).tier, Tier::kHost);
    // Promoting a and b needs 200 bytes of gpu: x is demoted; then c fits.
    InsertResult r = t.insert("m", {"a", "b", "c"}, {64, 64, 64}, {100, 100, 100});
    EXPECT_EQ(r.promoted, ab) << policy;
    EXPECT_EQ(r.created, (std::vector<bool>{false, false, true}));
    ASSERT_EQ(r.evictions.size(), 1u);
    const NodeId x = t.match("m", {"x"}).node_ids[0];
    calls.match("m", {"x"});
    EXPECT_EQ(r.evictions[0].node_id, x);
    EXPECT_EQ(r.evictions[0].from, Tier::kGpu);
    EXPECT_EQ(r.evictions[0].to, Tier::kHost);
    EXPECT_TRUE(r.evictions[0].copied);
    for (NodeId id : ab) EXPECT_EQ(t.node(id).resident_tiers, (std::vector<Tier>{Tier::kGpu, Tier::kHost}));
    EXPECT_EQ(t.node(r.node_ids[2]).parent, ab[1]);
    EXPECT_EQ(t.node(r.node_ids[2]).tier, Tier::kGpu);
    EXPECT_EQ(t.stats().used_bytes, (std::vector<std::int64_t>{300, 400}));  // a b c | a b x
    EXPECT_INVARIANTS(t);
    // The same state, priorities and ticks included, as promote then insert.
    EXPECT_EQ(calls.promote(ab).size(), 1u);
    EXPECT_TRUE(calls.insert("m", {"a", "b", "c"}, {64, 64, 64}, {100, 100, 100}).promoted.empty());
    expect_same(snapshot(t), snapshot(calls));
  }
}

TEST(TreeInsert, PromotesOnlyTheSlowSuffixAndNothingForASlowerTier) {
  KnowledgeTree t(caps(1000, 1000, 1000), "lru");
  auto ab = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}).node_ids;
  t.evict(Tier::kGpu, 100);   // b -> host
  t.evict(Tier::kHost, 100);  // b -> remote
  InsertResult r = t.insert("m", {"a", "b", "c"}, {1, 1, 1}, {100, 100, 100}, Tier::kHost);
  EXPECT_EQ(r.promoted, std::vector<NodeId>{ab[1]});  // a is in gpu, already faster than host
  EXPECT_EQ(t.node(ab[1]).resident_tiers, (std::vector<Tier>{Tier::kHost, Tier::kRemote}));
  EXPECT_EQ(t.node(r.node_ids[2]).tier, Tier::kHost);
  // Nothing new and nothing slow: no change at all.
  const Snapshot before = snapshot(t);
  r = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}, Tier::kRemote);
  EXPECT_TRUE(r.promoted.empty() && r.evictions.empty());
  EXPECT_EQ(r.created, (std::vector<bool>{false, false}));
  expect_same(before, snapshot(t));
  // A reused path with nothing new is still promoted.
  r = t.insert("m", {"a", "b"}, {1, 1}, {100, 100});
  EXPECT_EQ(r.promoted, std::vector<NodeId>{ab[1]});
  EXPECT_EQ(t.node(ab[1]).tier, Tier::kGpu);
  EXPECT_INVARIANTS(t);
}

TEST(TreeInsert, PromotionBlockedByLocksRollsBackEverything) {
  KnowledgeTree t(caps(400, 1000), "lru");
  auto ab = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}).node_ids;
  t.evict(Tier::kGpu, 200);  // a, b -> host
  const NodeId x = t.insert("m", {"x"}, {1}, {100}).node_ids[0];
  t.insert("m", {"y"}, {1}, {100});
  t.lock({x});
  const Snapshot before = snapshot(t);
  // a and b fit (200 free) but c does not: y is demoted first, then only
  // locked x and the pinned path are left. The promotion must be undone too.
  try {
    t.insert("m", {"a", "b", "c"}, {1, 1, 1}, {100, 100, 200});
    FAIL() << "expected CapacityError";
  } catch (const CapacityError& e) {
    EXPECT_NE(std::string(e.what()).find("insert"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'gpu'"), std::string::npos) << e.what();
  }
  expect_same(before, snapshot(t));
  EXPECT_EQ(t.node(ab[0]).tier, Tier::kHost);
  EXPECT_INVARIANTS(t);
  // The promotion alone cannot make room either when gpu is full of locks.
  t.lock({t.insert("m", {"z"}, {1}, {200}).node_ids[0]});
  const Snapshot full = snapshot(t);
  EXPECT_THROW(t.insert("m", {"a", "b"}, {1, 1}, {100, 100}), CapacityError);
  expect_same(full, snapshot(t));
  EXPECT_INVARIANTS(t);
}

TEST(TreeAccess, EqualsTheSequenceOfCalls) {
  for (const char* policy : {"pgdsf", "gdsf", "lru", "lfu"}) {
    // gpu holds any one path (at most 3 x 1500 bytes) but not the working set.
    KnowledgeTree batched(caps(6000, 12000), policy, test_profile());
    KnowledgeTree calls(caps(6000, 12000), policy, test_profile());
    std::mt19937 rng(5);
    for (int i = 0; i < 500; ++i) {
      Docs docs;
      Ints tok, bytes;
      while (docs.size() < 3) {
        int d = static_cast<int>(rng() % 25);
        std::string name = "d" + std::to_string(d);
        if (std::find(docs.begin(), docs.end(), name) != docs.end()) continue;
        docs.push_back(name);
        tok.push_back(64 + 40 * d);
        bytes.push_back(300 + 50 * d);
      }
      AccessResult a = batched.access("m", docs, tok, bytes);
      MatchResult m = calls.match("m", docs, tok);
      calls.lock(m.node_ids);
      calls.promote(m.node_ids);
      InsertResult ins = calls.insert("m", docs, tok, bytes);
      std::vector<NodeId> created(ins.node_ids.begin() + m.matched_docs, ins.node_ids.end());
      if (!m.node_ids.empty()) calls.touch(m.node_ids);
      std::int64_t new_tokens = 0;
      for (std::size_t k = m.node_ids.size(); k < docs.size(); ++k) new_tokens += tok[k];
      if (!created.empty()) calls.record_compute(created, m.matched_tokens, new_tokens);
      calls.unlock(m.node_ids);
      ASSERT_EQ(a.matched_docs, m.matched_docs);
      ASSERT_EQ(a.node_ids, ins.node_ids);
    }
    expect_same(snapshot(batched), snapshot(calls));
    EXPECT_GT(batched.stats().evictions[0], 0u) << policy;
  }
}

TEST(TreeAccess, LockKeepsThePathLocked) {
  KnowledgeTree t(caps(1000), "lru");
  AccessResult r = t.access("m", {"a", "b"}, {1, 1}, {100, 100}, Tier::kGpu, true);
  EXPECT_EQ(t.node(r.node_ids[0]).lock_count, 1u);
  EXPECT_EQ(t.node(r.node_ids[1]).lock_count, 1u);
  EXPECT_THROW(t.evict(Tier::kGpu, 1), CapacityError);
  t.unlock(r.node_ids);
  EXPECT_EQ(t.evict(Tier::kGpu, 1).size(), 1u);
}

// ---------------------------------------------------------------- invariant 6

TEST(TreeBadInput, RaisesAndLeavesTreeUnchanged) {
  KnowledgeTree t(caps(1000, 2000), "lru");
  auto ab = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}).node_ids;
  t.match("m", {"a"});
  const Snapshot before = snapshot(t);
  using IA = std::invalid_argument;
  EXPECT_THROW(t.insert("m", {"x", "y"}, {1}, {1, 1}), IA);          // mismatched lengths
  EXPECT_THROW(t.insert("m", {"x"}, {1}, {1, 1}), IA);
  EXPECT_THROW(t.insert("m", {}, {}, {}), IA);                      // empty path
  EXPECT_THROW(t.insert("m", {""}, {1}, {1}), IA);                  // empty id
  EXPECT_THROW(t.insert("", {"x"}, {1}, {1}), IA);                  // empty namespace
  EXPECT_THROW(t.insert("m", {"x", "x"}, {1, 1}, {1, 1}), IA);      // duplicate id
  EXPECT_THROW(t.insert("m", {"x"}, {0}, {1}), IA);                 // zero tokens
  EXPECT_THROW(t.insert("m", {"x"}, {1}, {-5}), IA);                // negative bytes
  EXPECT_THROW(t.insert("m", {"x"}, {1}, {1}, Tier::kRemote), IA);  // unconfigured tier
  EXPECT_THROW(t.match("m", {"a", "a"}), IA);
  EXPECT_THROW(t.match("m", {"a"}, Ints{0}), IA);
  EXPECT_THROW(t.unlock({ab[0]}), IA);                              // not locked
  t.lock({ab[0]});
  const Snapshot locked = snapshot(t);
  EXPECT_THROW(t.unlock({ab[0], ab[0]}), IA);                       // locked once, unlocked twice
  expect_same(locked, snapshot(t));
  t.unlock({ab[0]});
  EXPECT_THROW(t.lock({ab[0], 12345}), UnknownNodeError);           // unknown id: nothing locked
  EXPECT_THROW(t.touch({ab[1], 999}), UnknownNodeError);
  EXPECT_THROW(t.record_compute({ab[0]}, -1, 5), IA);
  EXPECT_THROW(t.record_compute({ab[0]}, 0, 0), IA);
  EXPECT_THROW(t.evict(Tier::kGpu, 0), IA);
  EXPECT_THROW(t.evict(Tier::kRemote, 10), IA);
  EXPECT_THROW(t.set_capacity(Tier::kGpu, -1), IA);
  EXPECT_THROW(t.node(77), UnknownNodeError);
  EXPECT_THROW(t.remove(77), UnknownNodeError);
  EXPECT_THROW(t.insert("m", {"big"}, {1}, {5000}), CapacityError);  // larger than the tier
  expect_same(before, snapshot(t));
}

TEST(TreeBadInput, ConstructorArguments) {
  using IA = std::invalid_argument;
  EXPECT_THROW(KnowledgeTree(caps(100), "fifo"), IA);
  EXPECT_THROW(KnowledgeTree(caps(100), "pgdsf"), IA);  // needs a profile
  EXPECT_THROW(KnowledgeTree({}, "lru"), IA);
  EXPECT_THROW(KnowledgeTree({{"gpu", 100}, {"disk", 100}}, "lru"), IA);
  EXPECT_THROW(KnowledgeTree({{"gpu", 0}}, "lru"), IA);
  try {
    KnowledgeTree(caps(100), "fifo");
  } catch (const IA& e) {
    EXPECT_NE(std::string(e.what()).find("pgdsf, gdsf, lru, lfu"), std::string::npos);
  }
  EXPECT_THROW(parse_tier("ssd"), IA);
  EXPECT_EQ(parse_tier("host"), Tier::kHost);
}

// ---------------------------------------------------------------- tier subsets

TEST(TreeTiers, AnySubsetDemotesIntoTheNextConfiguredTier) {
  KnowledgeTree t({{"gpu", 200}, {"remote", 1000}}, "lru");
  EXPECT_EQ(t.tiers(), (std::vector<Tier>{Tier::kGpu, Tier::kRemote}));
  NodeId a = t.insert("m", {"a"}, {1}, {150}).node_ids[0];
  auto evs = t.insert("m", {"b"}, {1}, {150}).evictions;  // a: gpu -> remote
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].from, Tier::kGpu);
  EXPECT_EQ(evs[0].to, Tier::kRemote);
  EXPECT_EQ(t.node(a).tier, Tier::kRemote);
  EXPECT_THROW(t.insert("m", {"c"}, {1}, {1}, Tier::kHost), std::invalid_argument);
  EXPECT_EQ(t.stats().tiers, (std::vector<Tier>{Tier::kGpu, Tier::kRemote}));
  EXPECT_INVARIANTS(t);

  KnowledgeTree host_only({{"host", 100}}, "lru");
  host_only.insert("m", {"a"}, {1}, {80}, Tier::kHost);
  evs = host_only.insert("m", {"b"}, {1}, {80}, Tier::kHost).evictions;  // the only tier drops
  ASSERT_EQ(evs.size(), 1u);
  EXPECT_EQ(evs[0].from, Tier::kHost);
  EXPECT_FALSE(evs[0].to.has_value());
  EXPECT_THROW(host_only.insert("m", {"c"}, {1}, {1}), std::invalid_argument);  // the default tier, gpu, is absent
  EXPECT_INVARIANTS(host_only);
}

// ------------------------------------------------------------ atomic locking

TEST(TreeLocking, MatchAndInsertLockInTheSameCall) {
  KnowledgeTree t(caps(1000), "lru");
  InsertResult r = t.insert("m", {"a", "b"}, {1, 1}, {100, 100}, Tier::kGpu, /*lock=*/true);
  for (NodeId id : r.node_ids) EXPECT_EQ(t.node(id).lock_count, 1u);
  EXPECT_THROW(t.evict(Tier::kGpu, 1), CapacityError);  // everything is locked
  const std::uint64_t lookups = t.stats().lookups;
  MatchResult m = t.match("m", {"a", "b", "c"}, std::nullopt, /*lock=*/true);
  EXPECT_EQ(m.matched_docs, 2);
  EXPECT_EQ(t.stats().lookups, lookups + 1);
  for (NodeId id : m.node_ids) EXPECT_EQ(t.node(id).lock_count, 2u);
  t.unlock(r.node_ids);
  t.unlock(m.node_ids);
  EXPECT_EQ(t.evict(Tier::kGpu, 200).size(), 2u);
  EXPECT_INVARIANTS(t);
}

TEST(TreeLocking, PeekRecordsNothing) {
  KnowledgeTree t(caps(1000), "lru");
  t.insert("m", {"a"}, {5}, {100});
  const Snapshot before = snapshot(t);
  MatchResult m = t.peek("m", {"a", "b"});
  EXPECT_EQ(m.matched_docs, 1);
  EXPECT_EQ(m.matched_tokens, 5);
  expect_same(before, snapshot(t));
  EXPECT_EQ(t.stats().hits, before.stats.hits);
}

// ------------------------------------------------------ sizes and overflow

TEST(TreeSizes, OversizedRequestFailsAtOnceWithoutEvicting) {
  KnowledgeTree t(caps(1000, 5000), "lru");
  for (int i = 0; i < 9; ++i) t.insert("m", {"d" + std::to_string(i)}, {1}, {100});
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.insert("m", {"big"}, {1}, {1001}), CapacityError);
  EXPECT_THROW(t.access("m", {"big"}, {1}, {1001}), CapacityError);
  expect_same(before, snapshot(t));  // no eviction was tried: counters and clocks unchanged
  try {
    t.insert("m", {"big"}, {1}, {1001});
  } catch (const CapacityError& e) {
    EXPECT_NE(std::string(e.what()).find("capacity is 1000"), std::string::npos) << e.what();
  }
  // It fits the host tier.
  EXPECT_TRUE(t.insert("m", {"big"}, {1}, {1001}, Tier::kHost).created[0]);
  EXPECT_INVARIANTS(t);
}

TEST(TreeSizes, ByteSumsNeverOverflow) {
  const std::int64_t big = std::int64_t{1} << 62;
  KnowledgeTree t({{"gpu", std::numeric_limits<std::int64_t>::max()}}, "lru");
  const Snapshot before = snapshot(t);
  EXPECT_THROW(t.insert("m", {"a", "b"}, {1, 1}, {big, big}), CapacityError);
  expect_same(before, snapshot(t));
  InsertResult r = t.insert("m", {"a"}, {1}, {big});
  EXPECT_EQ(r.created, std::vector<bool>{true});
  EXPECT_THROW(t.insert("m", {"a", "b", "c"}, {1, 1, 1}, {big, big, big}), CapacityError);
  EXPECT_EQ(t.stats().num_nodes, 1);
  EXPECT_INVARIANTS(t);
}

// ------------------------------------------------ names and changed documents

TEST(TreeNames, ReleasedWithTheirLastNode) {
  KnowledgeTree t(caps(100000), "lru");
  for (int i = 0; i < 1000; ++i) {
    const std::string d = "doc" + std::to_string(i);
    NodeId id = t.insert("ns" + std::to_string(i % 3), {d, d + "/b"}, {1, 1}, {10, 10}).node_ids[0];
    t.remove(id);
  }
  EXPECT_EQ(t.stats().num_nodes, 0);
  EXPECT_EQ(t.stats().interned_names, 0);
  t.insert("m", {"a", "b"}, {1, 1}, {10, 10});
  t.insert("m", {"b", "a"}, {1, 1}, {10, 10});
  EXPECT_EQ(t.stats().interned_names, 3);  // a, b, m
  EXPECT_INVARIANTS(t);
}

TEST(TreeNames, EvictionReleasesNamesToo) {
  KnowledgeTree t(caps(1000), "lru");
  for (int i = 0; i < 5000; ++i) t.insert("m", {"d" + std::to_string(i)}, {1}, {100});
  EXPECT_EQ(t.stats().num_nodes, 10);
  EXPECT_EQ(t.stats().interned_names, 11);
  EXPECT_INVARIANTS(t);
}

TEST(TreeRemoveDocument, DropsEveryPathThroughItButLockedOnes) {
  KnowledgeTree t(caps(10000, 10000), "lru");
  t.insert("m", {"a", "x", "y"}, {1, 1, 1}, {10, 10, 10});
  t.insert("m", {"b", "x"}, {1, 1}, {10, 10});
  t.insert("other", {"x"}, {1}, {10});
  t.insert("m", {"b", "c"}, {1, 1}, {10, 10});
  t.evict(Tier::kGpu, 10);  // one copy moves to host: both copies must go
  InsertResult held = t.insert("m", {"c", "x"}, {1, 1}, {10, 10}, Tier::kGpu, true);
  EXPECT_EQ(t.document_nodes("x"), 4);
  RemoveResult r = t.remove_document("x");
  EXPECT_EQ(r.kept_locked, 1);
  EXPECT_EQ(t.document_nodes("x"), 1);
  // Dropped: [a x], [a x y], [b x], [other: x]; kept: [c x] (locked) and everything not through x.
  EXPECT_TRUE(t.peek("m", {"a", "x"}).matched_docs == 1);
  EXPECT_TRUE(t.peek("m", {"b", "x"}).matched_docs == 1);
  EXPECT_EQ(t.peek("other", {"x"}).matched_docs, 0);
  EXPECT_EQ(t.peek("m", {"c", "x"}).matched_docs, 2);
  EXPECT_EQ(t.peek("m", {"b", "c"}).matched_docs, 2);
  std::int64_t dropped = 0;
  for (const Eviction& e : r.evictions) {
    EXPECT_FALSE(e.to.has_value());
    dropped += e.nbytes;
  }
  EXPECT_EQ(r.evictions.size(), 4u);  // [a x] and its child y (demoted to host), [b x], [other: x]
  EXPECT_EQ(dropped, 40);
  EXPECT_INVARIANTS(t);
  t.unlock(held.node_ids);
  r = t.remove_document("x");
  EXPECT_EQ(r.kept_locked, 0);
  EXPECT_EQ(r.evictions.size(), 1u);
  EXPECT_TRUE(t.remove_document("never-seen").evictions.empty());
  EXPECT_EQ(t.document_nodes("x"), 0);
  EXPECT_EQ(t.stats().interned_names, 4);  // a, b, c, m: "other", x and y left with their last nodes
  EXPECT_INVARIANTS(t);
}

// ------------------------------------------------------- cache-aware order

TEST(TreeBestOrder, LongestCachedPathWithinTheSetFirstThenRetrievalOrder) {
  KnowledgeTree t(caps(100000), "lru");
  t.insert("m", {"sys", "d1", "d2", "d3"}, {5, 10, 20, 30}, {1, 1, 1, 1});
  t.insert("m", {"sys", "d4"}, {5, 100}, {1, 1});
  const Snapshot before = snapshot(t);
  // [d2, d1, d3] after [d1, d2, d3]: the cached [d1, d2] comes first.
  EXPECT_EQ(t.best_order("m", {"sys", "d2", "d1", "d5"}, 1), (std::vector<std::string>{"sys", "d1", "d2", "d5"}));
  // The heavier path wins: d4 (100 tokens) over d1-d2 (30).
  EXPECT_EQ(t.best_order("m", {"sys", "d1", "d2", "d4"}, 1), (std::vector<std::string>{"sys", "d4", "d1", "d2"}));
  // Nothing cached under the fixed head, or an unknown namespace: the given order.
  EXPECT_EQ(t.best_order("m", {"other", "d1"}, 1), (std::vector<std::string>{"other", "d1"}));
  EXPECT_EQ(t.best_order("x", {"d1", "d2"}), (std::vector<std::string>{"d1", "d2"}));
  EXPECT_EQ(t.best_order("m", {"d9", "sys"}), (std::vector<std::string>{"sys", "d9"}));
  EXPECT_THROW(t.best_order("m", {"a"}, 2), std::invalid_argument);
  expect_same(before, snapshot(t));  // records nothing
}
