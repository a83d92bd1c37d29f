"""The run configuration: typed, frozen, declared once, and hashed exactly as before it was typed.

The hashes below were computed by the dict-building resolve_config before RunConfig existed: a record made then
is still recognised as the same run (and skipped) now."""

import hashlib
import json
from dataclasses import FrozenInstanceError, fields

import pytest

from peftbench.cli import build_parser, grid_options
from peftbench.data import dataset_cards
from peftbench.errors import UserError
from peftbench.grid.runner import GridOptions, resolve_config
from peftbench.methods import resolve_methods
from peftbench.store.records import config_hash
from peftbench.training.config import RunConfig

METHODS = {m.name: m for m in resolve_methods("all") + resolve_methods("miniature")}
CARDS = {n: c for n, c in dataset_cards().items() if c.source in ("synthetic", "prepared")}  # none needs data here
# Non-default flags (every one that reaches the config) and the per-card digest of their hashes (seeds 0 and 2).
FLAGS = ["--epochs", "2", "--batch-size", "8", "--micro-batch-size", "2", "--precision", "bf16", "--attention",
         "sdpa", "--checkpointing", "--no-embedding-cache", "--optimizer-kernel", "loop", "--inference", "merged",
         "--eval-resolution", "input"]
UNMERGED = ["--inference", "unmerged", "--optimizer-kernel", "foreach", "--epochs", "3"]
# The keys of the record's config, as the dict-building resolve_config wrote them.
KEYS = ["augmentation", "attention", "batch_size", "cache_embeddings", "checkpoint", "checkpoint_sha256",
        "checkpointing", "cpu_workers", "dataset", "device", "epochs", "eval_resolution", "grad_clip", "group_optim",
        "inference", "lr", "method", "micro_batch_size", "num_workers", "optimizer_kernel", "patience", "precision",
        "sam", "sam_spec", "seed", "threads_per_run", "w_cls", "w_seg", "weight_decay"]

DEFAULT_HASHES = {  # seed 0, GridOptions(device="cpu"): card -> method -> config hash
    "cod": {
        "bitfit": "710bc27a49d117a8", "conv_lora": "4ff5a7717a12e61d", "decoder_only": "e004befa5c485c35",
        "decoder_only_random": "3cb5842a5aa70232", "dora": "4a47ff488f718588", "full_ft": "7b94d930c35250c4",
        "lora": "2bfa77a664d93570", "lora_plus": "543d6ded3d9c230e", "mona": "99f5e9b8e838c966",
        "nas_lora": "0ee2b6b9086f9341", "nas_pc_lora": "4aab4d36b008a939", "sam_adapter": "97cd6dd4f006571c",
        "sam_scratch": "9652430cc0e14e93", "ssf": "afa33adf0c35211a", "vera": "551c8661ed69a1ed",
        "vpt": "fa8a46f78974fea2"
    },
    "isic2017": {
        "bitfit": "585a490210ec0f12", "conv_lora": "aca8a39dc8c3c21e", "decoder_only": "868bd8622af06f4f",
        "decoder_only_random": "62fce9759dfbb1bc", "dora": "88a893b23ceeb190", "full_ft": "24a7fa8dff0266af",
        "lora": "68a45c34b2f3d534", "lora_plus": "4c7230a7d388ed0b", "mona": "5f88b2d25d46fb28",
        "nas_lora": "8d0637c65d6ae165", "nas_pc_lora": "0f2c79549c2aa437", "sam_adapter": "3ca5cf4d5ebbfd77",
        "sam_scratch": "5f14f6bb098f53db", "ssf": "52fb6f8bc606a328", "vera": "1c3b37574e1437b6",
        "vpt": "362815d1e0fc9faf"
    },
    "leaf": {
        "bitfit": "eddd73e1fd313849", "conv_lora": "8c5c7afa0453c34e", "decoder_only": "d003cfc1f9207ae2",
        "decoder_only_random": "b4188c3b3c30416b", "dora": "b30b43116538775d", "full_ft": "337cc05a3e0287a9",
        "lora": "756516e987848474", "lora_plus": "97cd560fe6f98db3", "mona": "efe57529a96e7faf",
        "nas_lora": "4f09b201d1ae977c", "nas_pc_lora": "b2220037c22251c5", "sam_adapter": "8980f32b88b1e2b5",
        "sam_scratch": "bdb44e8d3688642a", "ssf": "84e27e81a8a117f5", "vera": "ef7e9cda1b33545d",
        "vpt": "85f66ebb2a6216f5"
    },
    "polyp": {
        "bitfit": "1427281951581e3a", "conv_lora": "3855594daba63295", "decoder_only": "d847045e949119f9",
        "decoder_only_random": "64c39dc57ea259f7", "dora": "89b41d1b74da3a5f", "full_ft": "0c254e283c2c663b",
        "lora": "b387b85608f0f610", "lora_plus": "23a1e596d43f52bb", "mona": "8a86f12231748a48",
        "nas_lora": "b5d3bb7e23a4e06a", "nas_pc_lora": "486052c513af8fdf", "sam_adapter": "64c3991242824db0",
        "sam_scratch": "ba4b2896178e5864", "ssf": "8884f127892a2827", "vera": "0aa510e2658aa525",
        "vpt": "6614f951984b43b3"
    },
    "road": {
        "bitfit": "6a122c6674cde343", "conv_lora": "dcabb2ddb975ad1f", "decoder_only": "0e187dcbf5c32bcf",
        "decoder_only_random": "200fae2738c77e9d", "dora": "69674ed43cc5502e", "full_ft": "5040c18a6f25fc52",
        "lora": "ec15356539cf0d20", "lora_plus": "35f11ce57bf2db73", "mona": "00378573d986ce83",
        "nas_lora": "955a9eaa0d5016a6", "nas_pc_lora": "b5c97fe954884f3d", "sam_adapter": "acfebaaf93e9287b",
        "sam_scratch": "e5348ebca9735ff0", "ssf": "d9c459122e470cf4", "vera": "97a981afd1bdfa30",
        "vpt": "f9cf4e007bb11bb8"
    },
    "sbu": {
        "bitfit": "78b7b6901cb77c1d", "conv_lora": "fcf3289f99e02beb", "decoder_only": "64adf9cd5af7f5fd",
        "decoder_only_random": "bd24dc36611224fe", "dora": "25ac5d15db741d45", "full_ft": "02548d25772e1851",
        "lora": "964c4e292a0352ea", "lora_plus": "0c441bb6c155021b", "mona": "c9a49f943dfc1db1",
        "nas_lora": "2f45b173ed9e93f7", "nas_pc_lora": "e52569ed160e5349", "sam_adapter": "49632cbc9dbb678a",
        "sam_scratch": "cfdd9ac983a0253e", "ssf": "6959c50c6c44244e", "vera": "19d3975148a3661d",
        "vpt": "28fd4250b27fb05e"
    },
    "synth_camo": {
        "bitfit": "80ceb819b8d6fec5", "conv_lora": "b9af90fe1442a866", "decoder_only": "a03b8bc0981f558f",
        "decoder_only_random": "82f0cb896efeed40", "dora": "b568007f54a6097c", "full_ft": "1c7461d8d16ed700",
        "lora": "cc06acef9559e22e", "lora_plus": "fd1833be9b6d04dd", "mona": "039ebc7b3137fa9b",
        "nas_lora": "87b35ad0676ea6ec", "nas_pc_lora": "263045b11571ec2d", "sam_adapter": "ce2138dcced52b4e",
        "sam_scratch": "bf90a22fa8bcd9c1", "ssf": "b5ebde8f2afcc109", "vera": "7135b22b2f36e823",
        "vpt": "c2191cef1ccb93ba"
    },
    "synth_leaf": {
        "bitfit": "a81de47ccf4896ec", "conv_lora": "987b6b77e28d8334", "decoder_only": "523f5771f5447a9f",
        "decoder_only_random": "035c308fbe2ddae6", "dora": "345e7feb84f2d95d", "full_ft": "2ddf3b74bdd06005",
        "lora": "c0f83d8e1616ad21", "lora_plus": "52d76483c2530b89", "mona": "0b0c4cff8d3f0be8",
        "nas_lora": "c5231732ad91f56e", "nas_pc_lora": "98cdf99b4b5f8f5f", "sam_adapter": "ec519a68f99aaaef",
        "sam_scratch": "0610cc7d40e76a32", "ssf": "5f21a63768ae911d", "vera": "67b1d7bf06f1cabe",
        "vpt": "ffde31d9c13172ef"
    },
    "synth_lesion": {
        "bitfit": "3c914ded9f0ab35b", "conv_lora": "1a6c3244b13abcbe", "decoder_only": "f446e91b4632f9e9",
        "decoder_only_random": "0cf38778a6bdcdb0", "dora": "3411aaa19de491f6", "full_ft": "7e09230c9cfd69a4",
        "lora": "17193a8039a85ffc", "lora_plus": "d0f90839c0089f7f", "mona": "6b83fc3b309e2672",
        "nas_lora": "137691950fc2ff37", "nas_pc_lora": "480e8ce43569b363", "sam_adapter": "ead1c6ce6f0bfa3b",
        "sam_scratch": "6aecee290b288215", "ssf": "0acdd287fc356711", "vera": "9cc1ef2e4004ec40",
        "vpt": "9ff1d92cb44fdd03"
    },
    "synth_polyp": {
        "bitfit": "03d78f7b93e15aad", "conv_lora": "907f7d7bc329052e", "decoder_only": "a97fd28a295b5ff1",
        "decoder_only_random": "81fa9f52a92b6650", "dora": "c2dd7c4f52818da1", "full_ft": "bcc20153ba2d254b",
        "lora": "e3188985ae81d210", "lora_plus": "276145f341810e59", "mona": "525b61e2797cd06c",
        "nas_lora": "d029506c66d73110", "nas_pc_lora": "1d321c691a817d25", "sam_adapter": "54e2724f8e38125d",
        "sam_scratch": "569487abe7c28fe7", "ssf": "069425b940683756", "vera": "0d6344a4a75c9d6f",
        "vpt": "578215055b03627e"
    },
    "synth_road": {
        "bitfit": "83a192fbc9ecd510", "conv_lora": "b16c206ad89fda7c", "decoder_only": "4aa30afcf372e856",
        "decoder_only_random": "7f8fe988be4d0c8f", "dora": "7bd1f88dc0b9aebe", "full_ft": "5baafef604acdd3e",
        "lora": "cdc02f9a4f154ddb", "lora_plus": "484a3e4e10fffb77", "mona": "8a42564a089f979b",
        "nas_lora": "99417d3e1ecbeddd", "nas_pc_lora": "d442848dd533ad5c", "sam_adapter": "8303e5a17d86e2e0",
        "sam_scratch": "9ce530cfec6ab7c7", "ssf": "3872ec8993de900e", "vera": "e68706e92bd00f14",
        "vpt": "bb68e3085cf54c86"
    },
    "synth_shadow": {
        "bitfit": "8f534c11a4de3ddd", "conv_lora": "b2473281c2185256", "decoder_only": "e68724931b166ac7",
        "decoder_only_random": "aa9078e38dc06174", "dora": "f47b43de2ad291da", "full_ft": "495ce877e8272fa2",
        "lora": "7ebfcc9c179803ec", "lora_plus": "a9d21239382001a7", "mona": "5cff7b2eda395925",
        "nas_lora": "75516c38373d6a52", "nas_pc_lora": "81a23af3c1e59c65", "sam_adapter": "0ff4f2bfe71ef6a9",
        "sam_scratch": "3b524f0cdec3cc65", "ssf": "b3f4ab63757ce389", "vera": "ec342157b4689572",
        "vpt": "a53d98eefffc1f03"
    },
    "synth_trans": {
        "bitfit": "3bceff2e464c6f47", "conv_lora": "ba4c85864632ad34", "decoder_only": "60669cacf4ffb295",
        "decoder_only_random": "0cd955a31b32822f", "dora": "3343e1fb73f0dbd1", "full_ft": "066282c6cefb2a0e",
        "lora": "cd7f0e8a359eb1d6", "lora_plus": "d53ad24356b34289", "mona": "b7e58a3ea55ae451",
        "nas_lora": "0c9a821c94b2e91c", "nas_pc_lora": "b52819ddf67151b6", "sam_adapter": "b75ecd6eea4e3c45",
        "sam_scratch": "b6348f61693052ab", "ssf": "3820cb2cb66f3588", "vera": "d67663602db6c490",
        "vpt": "1ca381b686dd9577"
    },
    "trans10k_v1": {
        "bitfit": "f4537342239a183b", "conv_lora": "253ec1ff2224a301", "decoder_only": "d85953db2045b6c7",
        "decoder_only_random": "5ad652e83f4a58c2", "dora": "dee8cd70b576361b", "full_ft": "781e3f9dd580c001",
        "lora": "80f8173dfa940017", "lora_plus": "9fdc274caec31fca", "mona": "a594223755d0a16f",
        "nas_lora": "bb58cab3c1a02857", "nas_pc_lora": "722b046a33be4ba4", "sam_adapter": "d18890c96a6afe2b",
        "sam_scratch": "6c50223d548d72d4", "ssf": "8fac14f5d8258b81", "vera": "910fcbbfe5497171",
        "vpt": "3e485fbf5cc2de19"
    },
    "trans10k_v2": {
        "bitfit": "df6429b27eebd920", "conv_lora": "84eff32611348fe8", "decoder_only": "d666563172b5ba88",
        "decoder_only_random": "d9a3449c2f099324", "dora": "001885d1fc288a44", "full_ft": "8dba1468379a3ead",
        "lora": "225c320f196d7e37", "lora_plus": "a58056e1b9ea0a8e", "mona": "0e940a8ff390f0bf",
        "nas_lora": "18533a7700d7f934", "nas_pc_lora": "73170080d5bc1b54", "sam_adapter": "ca4aa8b5e35dfdeb",
        "sam_scratch": "327d5378e11dd85f", "ssf": "e20d188885bae493", "vera": "a13eeb5c35a375bb",
        "vpt": "f17f80fa02fd9cc8"
    },
}
FLAGS_DIGESTS = {
    "cod": "c67f5941fc5f20be", "isic2017": "2a50356097813ab8", "leaf": "f97a7b0c6bf17c38",
    "polyp": "340730f0368e3cfc", "road": "5478b0016c80fda9", "sbu": "d5ed3a917d2fff46",
    "synth_camo": "6aca8ef7ba1aea20", "synth_leaf": "5a0372cd82844659", "synth_lesion": "81ab476f29ce88e4",
    "synth_polyp": "8555dd6409a6c865", "synth_road": "09371e7ae909c3d6", "synth_shadow": "4f284694d10af822",
    "synth_trans": "11ba2d305e15a502", "trans10k_v1": "875cd53e5b1d6c24", "trans10k_v2": "68add028d09bf15f"
}
UNMERGED_DIGESTS = {
    "cod": "8ff473648eb0092d", "isic2017": "86592dc0622162c7", "leaf": "36d365937bc976eb",
    "polyp": "cf7fb8f257ea6729", "road": "0f86e5b483f82bea", "sbu": "318403dda00970a3",
    "synth_camo": "b406bdc298604685", "synth_leaf": "2e1a2423a8efb749", "synth_lesion": "3c202450b185b2c1",
    "synth_polyp": "91a889d138d8d1b0", "synth_road": "f4020004d6ca10fc", "synth_shadow": "75cd5394d4741449",
    "synth_trans": "6bad63526da18a91", "trans10k_v1": "3cbab6ecc7d51aeb", "trans10k_v2": "8de3db0a748bf169"
}


def _options(*flags: str) -> GridOptions:
    return grid_options(build_parser().parse_args(["run", "--device", "cpu", *flags]))


def _digest(opts: GridOptions, card) -> str:
    hashes = [config_hash(resolve_config(METHODS[m], card, seed, opts).as_dict()) for m in sorted(METHODS)
              for seed in (0, 2)]
    return hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:16]


def test_every_method_on_every_card_hashes_as_before():
    assert set(DEFAULT_HASHES) == set(CARDS) and all(set(h) == set(METHODS) for h in DEFAULT_HASHES.values())
    opts = _options()
    got = {c: {m: config_hash(resolve_config(METHODS[m], card, 0, opts).as_dict()) for m in METHODS}
           for c, card in CARDS.items()}
    assert got == DEFAULT_HASHES


@pytest.mark.parametrize("flags, digests", [(FLAGS, FLAGS_DIGESTS), (UNMERGED, UNMERGED_DIGESTS)])
def test_non_default_flags_hash_as_before(flags, digests):
    opts = _options(*flags)
    assert {c: _digest(opts, card) for c, card in CARDS.items()} == digests


def test_the_config_is_frozen_and_its_dict_has_todays_keys():
    config = resolve_config(METHODS["lora"], CARDS["synth_road"], 0, GridOptions(device="cpu"))
    assert sorted(config.as_dict()) == sorted(KEYS) and dict(config) == config.as_dict()
    with pytest.raises(FrozenInstanceError):
        config.epochs = 3


def test_a_stored_config_reads_back_with_its_hash_and_a_wrong_one_is_one_line():
    config = resolve_config(METHODS["nas_pc_lora"], CARDS["synth_trans"], 1, GridOptions(device="cpu"))
    stored = json.loads(json.dumps(config.as_dict()))  # as a record holds it: tuples become lists
    assert config_hash(RunConfig.from_dict(stored)) == config_hash(config)
    with pytest.raises(UserError, match="^a run config with unknown key\\(s\\) extra and no patience$"):
        RunConfig.from_dict({**{k: v for k, v in stored.items() if k != "patience"}, "extra": 1})


def test_every_grid_option_is_one_flag_whose_default_is_the_fields():
    run = next(a for a in build_parser()._actions if a.dest == "command").choices["run"]
    dests = {a.dest for a in run._actions}
    assert {f.name for f in fields(GridOptions)} <= dests
    assert grid_options(run.parse_args([])) == GridOptions()
    assert _options("--seeds", "2,0,2").seeds == [2, 0]


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "x", "--batch-size 'x': expected a positive integer"),
    ("--checkpoint-interval", "-1", "--checkpoint-interval '-1': expected a number of seconds >= 0"),
    ("--seeds", "", "--seeds is empty"),
])
def test_a_bad_flag_is_the_converters_error(flag, value, message):
    with pytest.raises(UserError, match=message):
        _options(flag, value)
