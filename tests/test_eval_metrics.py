"""LongBench / InfiniteBench metrics against hand-computed values."""
import pytest

from focus_jax.eval import metrics as M


def test_normalize_answer_corner_cases():
  assert M.normalize_answer("The Cat, sat!") == "cat sat"
  assert M.normalize_answer("  An apple  a day ") == "apple day"
  assert M.normalize_answer("The theater") == "theater"        # articles only as words
  assert M.normalize_answer("") == ""
  assert M.normalize_zh_answer("北京， 是 首都。") == "北京是首都"


def test_qa_f1():
  # "cat sat" vs "cat sat on mat": 2 common, P = 1, R = 1/2, F1 = 2/3
  assert M.qa_f1_score("The Cat sat.", "a cat sat on the mat") == pytest.approx(2 / 3)
  assert M.qa_f1_score("Paris!", "paris") == 1.0
  assert M.qa_f1_score("", "paris") == 0.0
  assert M.qa_f1_score("the", "a") == 0.0                      # both normalise to nothing
  # several golds: the max (2/3 against "dog", 1/2 against "cat mouse")
  assert M.longbench_sample_score("hotpotqa", "cat dog", ["dog", "cat mouse"], []) == \
      pytest.approx(2 / 3)
  assert M.longbench_sample_score("hotpotqa", "x", [], []) == 0.0


def test_qa_f1_zh():
  assert M.qa_f1_zh_score("北京。", "北京") == 1.0
  assert M.qa_f1_zh_score("", "北京") == 0.0


def test_rouge_l_summary_level():
  # the rouge package counts distinct words (its Ngrams are sets): reference and
  # hypothesis have 5 distinct words each, the LCS "the cat on the mat" 4 distinct
  assert M.rouge_score("the cat sat on the mat", "the cat lay on the mat") == \
      pytest.approx(0.8, abs=1e-6)
  # sentences split at ".": union LCS {a, c} + {d, e} = 4 of 5 reference / 4 hypothesis
  # words: R = 0.8, P = 1, F = 2PR / (P + R)
  assert M.rouge_score("a c d. e", "a b c. d e") == pytest.approx(1.6 / 1.8, abs=1e-6)
  assert M.rouge_score("", "a b") == 0.0
  assert M.rouge_zh_score("我爱北京", "我爱北京") == pytest.approx(1.0, abs=1e-6)


def test_classification():
  classes = ["Location", "Entity", "Human being", "Human"]
  assert M.classification_score("Type: Location and Entity", "Location",
                                all_classes=classes) == 0.5
  assert M.classification_score("Human being", "Human being", all_classes=classes) == 1.0
  assert M.classification_score("nothing", "Location", all_classes=classes) == 0.0
  # the official loop removes while iterating: "ab" is skipped and stays (1 / 2, not 1)
  assert M.classification_score("abc", "abc", all_classes=["a", "ab", "abc"]) == 0.5


def test_count_retrieval_code():
  assert M.count_score("There are 3 paragraphs, 3 unique of 10", "3") == pytest.approx(2 / 3)
  assert M.count_score("none", "3") == 0.0
  assert M.retrieval_score("Paragraph 12", "Paragraph 12") == 1.0
  assert M.retrieval_score("Paragraph 1, Paragraph 12", "Paragraph 12") == 0.5
  assert M.retrieval_zh_score("段落3", "段落3") == 1.0
  assert M.code_sim_score("```python\n# comment\nreturn x + 1\n", "return x + 1") == 1.0
  # InDel distance 2 over 8 characters: ratio 75
  assert M.code_sim_score("abcd", "abce") == 0.75
  assert M.code_sim_score("# only a comment", "abc") == 0.0


def test_longbench_score_first_line_and_rounding():
  classes = ["Location", "Entity"]
  assert M.longbench_score("trec", ["Location\nEntity", "Entity"], [["Location"], ["Location"]],
                           classes) == 50.0
  assert M.longbench_score("hotpotqa", ["cat", "dog", "x"], [["cat"], ["cat"], ["cat"]],
                           []) == 33.33


def test_infinitebench_scores():
  one = M.infinitebench_score_one
  assert one("passkey", " 12345.", ["12345"]) == 1.0
  assert one("passkey", "123 45", ["12345"]) == 0.0
  assert one("number_string", "The sequence is 0042", ["0042"]) == 1.0
  assert one("kv_retrieval", 'The value is "abc-def".', ["abc-def"]) == 1.0
  assert one("kv_retrieval", "abc", ["abc-def"]) == 0.0
  assert one("longbook_choice_eng", "B. foo", ["foo", "B"]) == 1.0
  assert one("longbook_choice_eng", " The answer is: C", ["foo", "B"]) == 0.0
  assert one("longbook_choice_eng", " I think B", ["foo", "B"]) == 1.0
  assert one("math_find", "42 is the answer", [42]) == 1.0
  assert one("math_find", "none", [42]) == 0.0
  assert one("code_debug", "A.", ["func_x", "A"]) == 1.0
  assert one("code_debug", "so the answer is: func_x", ["func_x", "B"]) == 1.0
  with pytest.raises(ValueError, match="no InfiniteBench scorer"):
    one("math_calc", "1", [1])
