"""LongBench (v1): reader, official prompt templates, new-token limits, truncation.

Data: LongBench's public jsonl files, DATA_DIR/<dataset>.jsonl, one sample a
line with the fields input, context, answers, all_classes, length (the user
downloads them; nothing is fetched at run time). Prompts are
config/dataset2prompt.json, new-token limits config/dataset2maxlen.json of
THUDM/LongBench; a prompt longer than max_length tokens keeps its first and
last max_length // 2 tokens (`truncate_middle`; the official pred.py decodes
the two halves and re-tokenises their concatenated text, which can shift the
count by a token or so at the seam). Chat templates (pred.py's build_chat) are
applied only on request, and never to the few-shot and code sets
(NO_CHAT_DATASETS), as in pred.py.
"""
from __future__ import annotations

from pathlib import Path

from focus_jax.eval.results import DataError, read_jsonl

PROMPTS = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}
MAX_NEW_TOKENS = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64,
    "hotpotqa": 32, "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512,
    "qmsum": 512, "multi_news": 512, "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128,
    "lsht": 64, "passage_count": 32, "passage_retrieval_en": 32, "passage_retrieval_zh": 32,
    "lcc": 64, "repobench-p": 64,
}
ENGLISH = ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique",
           "gov_report", "qmsum", "multi_news", "trec", "triviaqa", "samsum", "lcc",
           "repobench-p")
NO_CHAT_DATASETS = ("trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p")
FIELDS = ("input", "context", "answers", "all_classes", "length")


def read_dataset(data_dir, dataset: str) -> list[dict]:
  """DATA_DIR/<dataset>.jsonl as a list of samples (clear errors name file and line)."""
  if dataset not in PROMPTS:
    raise ValueError(f"unknown LongBench dataset {dataset!r}; known: {', '.join(PROMPTS)}")
  path = Path(data_dir) / f"{dataset}.jsonl"
  rows = read_jsonl(path, required=FIELDS)
  for n, row in enumerate(rows, 1):
    if not isinstance(row["answers"], list):
      raise DataError(f"{path}: sample {n}: 'answers' must be a list")
  return rows


def build_prompt(dataset: str, sample: dict) -> str:
  return PROMPTS[dataset].format(context=sample["context"], input=sample["input"])


def truncate_middle(ids, max_length: int):
  """The first and last max_length // 2 ids when there are more than max_length."""
  if max_length < 2:
    raise ValueError(f"max_length must be >= 2, got {max_length}")
  if len(ids) <= max_length:
    return list(ids)
  half = max_length // 2
  return list(ids[:half]) + list(ids[len(ids) - half:])


def prompt_ids(tokenizer, dataset: str, sample: dict, max_length: int,
               chat_template: bool = False) -> list[int]:
  """Token ids of the sample's prompt, cut from the middle to max_length tokens."""
  ids = truncate_middle(tokenizer(build_prompt(dataset, sample))["input_ids"], max_length)
  if not chat_template or dataset in NO_CHAT_DATASETS:
    return ids
  text = tokenizer.decode(ids, skip_special_tokens=True)
  chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True)
  return list(tokenizer(chat, add_special_tokens=False)["input_ids"])


def pred_row(prediction: str, sample: dict) -> dict:
  """One line of LongBench's pred files (its eval.py scores these)."""
  return {"pred": prediction, "answers": sample["answers"],
          "all_classes": sample["all_classes"], "length": sample["length"]}
