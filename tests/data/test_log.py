"""fedmtl/data/log_reader.py: the generic interaction-log reader, RecBole atomic files and the presets.

Every layout is read from small files written here with the published column names; every
malformed input is one DataError line naming the file (and line and column where there is one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedmtl.data import log_layouts as logmod
from fedmtl.data.log_reader import read_log
from fedmtl.data.log_layouts import load_layout, read_recbole
from fedmtl.errors import ConfigError, DataError


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def one_line_error(call, *names: str, kind=DataError) -> str:
    with pytest.raises(kind) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in {msg!r}"
    return msg


def rows(lg, *cols):
    """(raw user, raw item, *cols) tuples of a log's events, for comparing with the files."""
    ev = lg.events
    return [(lg.raw_user_ids[u].item() if hasattr(lg.raw_user_ids[u], "item") else lg.raw_user_ids[u],
             lg.raw_item_ids[i].item() if hasattr(lg.raw_item_ids[i], "item") else lg.raw_item_ids[i],
             *(ev[c].iloc[k].item() for c in cols))
            for k, (u, i) in enumerate(zip(ev["user"], ev["item"]))]


# --- Instacart --------------------------------------------------------------------------------

SAMPLE = (",order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,"
          "product_id,add_to_cart_order,reordered\n"
          "0,2539329,7,1,2,8,,196,1.0,0.0\n"
          "1,2539329,7,1,2,8,,14084,2.0,0.0\n"
          "2,2398795,7,2,3,7,15.0,196,1.0,1.0\n"
          "3,1000001,3,1,0,9,,12,1.0,0.0\n")


def test_instacart_sample_one_file_layout(tmp_path):
    path = write(tmp_path / "instacart", "df_sample.csv", SAMPLE)
    lg = load_layout("instacart_sample", path)
    assert lg.n_users == 2 and lg.n_items == 3
    assert lg.raw_user_ids.tolist() == [3, 7] and lg.raw_item_ids.tolist() == [12, 196, 14084]
    assert list(lg.events.columns) == ["user", "item", "ts", "basket", "purchase", "reordered"]
    assert rows(lg, "ts", "purchase", "reordered") == [
        (7, 196, 1, 1.0, 0.0), (7, 14084, 1, 1.0, 0.0), (7, 196, 2, 1.0, 1.0), (3, 12, 1, 1.0, 0.0)]
    b = lg.events["basket"].tolist()
    assert b[0] == b[1] and len({b[0], b[2], b[3]}) == 3
    assert lg.labels["purchase"]["kind"] == "event" and lg.labels["reordered"]["kind"] == "binary"
    # the folder works as well as the file
    assert len(load_layout("instacart_sample", tmp_path / "instacart").events) == 4


def instacart_full(folder: Path, products: bool = True) -> Path:
    write(folder, "orders.csv",
          "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n"
          "10,1,prior,1,2,08,\n11,1,prior,2,3,07,15.0\n12,1,train,3,3,12,21.0\n"
          "20,2,prior,1,1,10,\n21,2,test,2,1,10,3.0\n")
    write(folder, "order_products__prior.csv",
          "order_id,product_id,add_to_cart_order,reordered\n10,5,1,0\n10,6,2,0\n11,5,1,1\n20,6,1,0\n")
    write(folder, "order_products__train.csv", "order_id,product_id,add_to_cart_order,reordered\n12,5,1,1\n12,7,2,0\n")
    if products:
        write(folder, "products.csv", "product_id,product_name,aisle_id,department_id\n"
              '5,"Banana, organic",24,4\n6,Milk,84,16\n7,Bread,112,3\n8,Unbought,1,1\n')
    return folder


def test_instacart_full_layout_joins_orders_and_reads_products(tmp_path):
    lg = load_layout("instacart", instacart_full(tmp_path / "ic"))
    # prior rows first, then train; user and order_number come from orders.csv
    assert rows(lg, "ts", "reordered") == [(1, 5, 1, 0.0), (1, 6, 1, 0.0), (1, 5, 2, 1.0), (2, 6, 1, 0.0),
                                          (1, 5, 3, 1.0), (1, 7, 3, 0.0)]
    assert lg.events["basket"].nunique() == 4  # orders 10, 11, 20, 12 (21 is a test order: no lines)
    f = lg.item_features
    assert f.cat_names == ["aisle_id", "department_id"]
    # aisles 24, 84, 112 coded 1..3 in sorted string order ("112" < "24" < "84"); product 8 unused
    assert f.cat[:, 0].tolist() == [2, 3, 1] and f.cards == [4, 4]


def test_instacart_full_layout_without_products_has_no_item_features(tmp_path):
    lg = load_layout("instacart", instacart_full(tmp_path / "ic", products=False))
    assert lg.item_features is None and len(lg.events) == 6


def test_instacart_order_missing_from_orders_names_the_line(tmp_path):
    folder = instacart_full(tmp_path / "ic")
    write(folder, "order_products__train.csv", "order_id,product_id,add_to_cart_order,reordered\n12,5,1,1\n99,7,2,0\n")
    one_line_error(lambda: load_layout("instacart", folder), "order_products__train.csv:3", "order_id", "'99'",
                   "orders.csv")


def test_a_bad_value_in_a_joined_column_names_the_joined_file(tmp_path):
    folder = instacart_full(tmp_path / "ic")
    write(folder, "orders.csv",
          "order_id,user_id,eval_set,order_number,order_dow,order_hour_of_day,days_since_prior_order\n"
          "10,1,prior,1,2,08,\n11,1,prior,two,3,07,15.0\n12,1,train,3,3,12,21.0\n20,2,prior,1,1,10,\n")
    one_line_error(lambda: load_layout("instacart", folder), "orders.csv:3", "order_number", "'two'")


# --- RecBole atomic files --------------------------------------------------------------------


def test_recbole_atomic_files_with_user_and_item(tmp_path):
    folder = tmp_path / "toy"
    write(folder, "toy.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
          "u9\ti2\t4\t881250949\nu1\ti2\t3.5\t891717742.0\nu9\ti1\t1\t878887116\n")
    write(folder, "toy.user", "user_id:token\tage:float\tgender:token\toccupation:token\n"
          "u1\t24\tM\ttechnician\nu9\t53\tF\tother\nu5\t40\tF\tnone\n")
    write(folder, "toy.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\t"
          "emb:float_seq\ni1\tToy Story\t1995\tAnimation Comedy\t0.1 0.2\ni2\tHeat\t1995\tAction\t0.3 0.4\n")
    lg = read_recbole(folder, "toy")
    assert lg.raw_user_ids.tolist() == ["u1", "u9"] and lg.raw_item_ids.tolist() == ["i1", "i2"]
    assert lg.labels == {"rating": {"kind": "numeric", "column": "rating:float"},
                         "interaction": {"kind": "event", "column": None}}
    assert rows(lg, "rating", "ts") == [("u9", "i2", 4.0, 881250949), ("u1", "i2", 3.5, 891717742),
                                       ("u9", "i1", 1.0, 878887116)]
    u = lg.user_features
    assert u.cat_names == ["gender:token", "occupation:token"] and u.num_names == ["age:float"]
    assert u.num[:, 0].tolist() == [24.0, 53.0]
    assert u.cat[:, 0].tolist() == [2, 1]  # F=1, M=2 (0 is unknown)
    it = lg.item_features
    assert it.multi_vocab["class:token_seq"] == ["Action", "Animation", "Comedy"]
    assert it.multi["class:token_seq"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert "emb:float_seq" not in it.multi and "emb:float_seq" not in it.num_names
    assert load_layout("recbole", folder).n_items == 2 and load_layout("recbole", folder / "toy.inter").n_users == 2


def test_recbole_bad_type_and_missing_user(tmp_path):
    folder = tmp_path / "bad"
    write(folder, "bad.inter", "user_id:token\titem_id:tokn\n1\t2\n")
    one_line_error(lambda: read_recbole(folder, "bad"), "bad.inter:1", "item_id:tokn", "'tokn'")
    write(folder, "bad.inter", "session_id:token\titem_id:token\n1\t2\n")
    one_line_error(lambda: read_recbole(folder, "bad"), "bad.inter", "'user_id'", "session_id:token")
    assert read_recbole(folder, "bad", user="session_id").n_users == 1


# --- KuaiRand, Tenrec, Taobao, RetailRocket --------------------------------------------------

KR_HEAD = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
           "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab\n")


def test_kuairand_logs_and_feature_files(tmp_path):
    folder = tmp_path / "KuaiRand-Pure" / "data"
    write(folder, "log_standard_4_08_to_4_21_pure.csv", KR_HEAD +
          "0,10,20220411,1900,1649675512388,1,1,0,0,0,0,1,1385,209900,0,0,0,0,1\n"
          "1,20,20220411,1100,1649645295928,0,0,0,0,0,0,0,0,255160,0,0,0,0,8\n")
    write(folder, "log_standard_4_22_to_5_08_pure.csv", KR_HEAD +
          "0,20,20220425,1600,1650874367095,1,0,1,0,0,0,0,1405,170833,0,0,1,0,1\n")
    ucols = ",".join(["user_id", "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                      "follow_user_num", "follow_user_num_range", "fans_user_num", "fans_user_num_range",
                      "friend_user_num", "friend_user_num_range", "register_days", "register_days_range"]
                     + [f"onehot_feat{k}" for k in range(18)])
    write(folder, "user_features_pure.csv", ucols + "\n"
          + "0,high_active,0,0,0,5,(0;10],3,[1;10),0,0,107,61-90," + ",".join(["1"] * 18) + "\n"
          + "1,full_active,0,0,1,120,(100;150],0,0,1,[1;5),500,366-730," + ",".join(["0"] * 18) + "\n")
    write(folder, "video_features_basic_pure.csv",
          "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width,"
          "server_height,music_id,music_type,tag\n"
          '10,123,NORMAL,2022-04-10,LongImport,0.0,87433.0,720.0,1280.0,9155697141,9.0,"39,2"\n'
          "20,456,AD,2022-04-10,Kmovie,0.0,,720.0,1280.0,6355810746,9.0,2\n")
    lg = load_layout("kuairand", folder)
    assert len(lg.events) == 3 and lg.n_users == 2 and lg.n_items == 2
    assert rows(lg, "ts", "click", "follow", "play_time", "profile_enter") == [
        (0, 10, 1649675512388, 1.0, 0.0, 1385.0, 0.0), (1, 20, 1649645295928, 0.0, 0.0, 0.0, 0.0),
        (0, 20, 1650874367095, 1.0, 1.0, 1405.0, 1.0)]
    assert set(lg.labels) == set(logmod.offers("kuairand"))
    assert lg.user_features.num[:, 0].tolist() == [5.0, 120.0]
    assert lg.item_features.num[:, 0].tolist() == [87433.0, 0.0]  # an empty duration is 0.0
    assert lg.item_features.multi_vocab["tag"] == ["2", "39"]
    assert lg.item_features.multi["tag"].tolist() == [[1, 1], [1, 0]]
    assert lg.item_features.cat_names[0] == "video_type" and lg.item_features.cat[:, 0].tolist() == [2, 1]


def test_tenrec_no_clock_and_features_from_the_log(tmp_path):
    folder = tmp_path / "tenrec"
    write(folder, "ctr_data_1M.csv", "user_id,item_id,click,follow,like,share,video_category,watching_times,gender,"
          "age,hist_1,hist_2\n5,100,1,0,1,0,3,2,1,4,0,0\n5,101,0,0,0,0,7,0,1,4,0,0\n2,100,1,1,0,1,3,1,2,2,0,0\n")
    lg = load_layout("tenrec", folder)
    assert lg.events["ts"].tolist() == [0, 1, 2]  # the row's position
    assert rows(lg, "click", "follow", "like", "share", "watching_times") == [
        (5, 100, 1.0, 0.0, 1.0, 0.0, 2.0), (5, 101, 0.0, 0.0, 0.0, 0.0, 0.0), (2, 100, 1.0, 1.0, 0.0, 1.0, 1.0)]
    assert lg.user_features.cat_names == ["gender", "age"]
    assert lg.user_features.cat.tolist() == [[2, 1], [1, 2]]  # users 2, 5: gender 2/1, age 2/4
    assert lg.item_features.cat[:, 0].tolist() == [1, 2]  # category 3 then 7


def test_taobao_without_header(tmp_path):
    folder = tmp_path / "taobao"
    write(folder, "UserBehavior.csv", "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,cart,1511561733\n"
          "2,2268318,2520377,buy,1511572885\n")
    lg = load_layout("taobao", folder)
    assert rows(lg, "pv", "cart", "fav", "buy", "ts") == [
        (1, 2268318, 1.0, 0.0, 0.0, 0.0, 1511544070), (1, 2333346, 0.0, 1.0, 0.0, 0.0, 1511561733),
        (2, 2268318, 0.0, 0.0, 0.0, 1.0, 1511572885)]
    assert lg.item_features.cat[:, 0].tolist() == [1, 2]


def test_taobao_wrong_field_count_is_one_line(tmp_path):
    folder = tmp_path / "taobao"
    write(folder, "UserBehavior.csv", "1,2268318,2520377,pv,1511544070,extra\n")
    one_line_error(lambda: load_layout("taobao", folder), "UserBehavior.csv:1", "expected 5 fields", "found 6")


def test_retailrocket_event_types(tmp_path):
    folder = tmp_path / "rr"
    write(folder, "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
          "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n"
          "1433223236124,257597,transaction,355908,4000\n")
    lg = load_layout("retailrocket", folder)
    assert rows(lg, "view", "addtocart", "transaction") == [
        (257597, 355908, 1.0, 0.0, 0.0), (992329, 248676, 0.0, 1.0, 0.0), (257597, 355908, 0.0, 0.0, 1.0)]
    assert not lg.has_basket


# --- the generic reader: dense ids, formats, errors ------------------------------------------


def spec_for(path: Path, **extra) -> dict:
    return {"name": "t", "file": str(path), "columns": {"user": "u", "item": "i", "timestamp": "t"},
            "labels": {"score": {"kind": "numeric", "column": "s"}}, **extra}


def test_dense_recoding_sorted_and_integer_tokens_merge(tmp_path):
    path = write(tmp_path, "x.csv", "u,i,t,s\n30,b,5,1\n4,a,6,2\n30.0,a,7,3\n100,c,8,4\n")
    lg = read_log(spec_for(path))
    assert lg.raw_user_ids.tolist() == [4, 30, 100]  # numeric order, "30.0" is user 30
    assert lg.events["user"].tolist() == [1, 0, 1, 2]
    assert lg.raw_item_ids.tolist() == ["a", "b", "c"] and lg.events["item"].tolist() == [1, 0, 0, 2]
    assert lg.events["user"].dtype == np.int64 and lg.events["score"].dtype == np.float32


def test_tsv_and_parquet(tmp_path):
    tsv = write(tmp_path, "x.tsv", "u\ti\tt\ts\n1\t2\t3\t4.5\n")
    assert read_log(spec_for(tsv)).events["score"].tolist() == [4.5]
    pytest.importorskip("pyarrow")
    import pandas as pd

    pq = tmp_path / "x.parquet"
    pd.DataFrame({"u": [1, 2], "i": [7, 7], "t": [10, 11], "s": [1.5, None]}).to_parquet(pq)
    one_line_error(lambda: read_log(spec_for(pq)), "x.parquet: row 2", "'s'", "empty")


def test_parquet_without_pyarrow_says_to_install_it(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    one_line_error(lambda: read_log(spec_for(path)), "x.parquet", "pip install pyarrow")


def test_missing_file_is_one_line(tmp_path):
    one_line_error(lambda: read_log(spec_for(tmp_path / "nope.csv")), "nope.csv", "not found")
    one_line_error(lambda: load_layout("kuairand", tmp_path), "log_standard_*.csv")


def test_missing_column_names_it_and_lists_the_present_ones(tmp_path):
    path = write(tmp_path, "x.csv", "u,item,t,s\n1,2,3,4\n")
    one_line_error(lambda: read_log(spec_for(path)), "x.csv", "'i'", "u, item, t, s")


def test_bad_number_names_its_line_and_column(tmp_path):
    path = write(tmp_path, "x.csv", "u,i,t,s\n1,2,3,4\n\n1,3,4,four\n")
    one_line_error(lambda: read_log(spec_for(path)), "x.csv:4", "'s'", "'four'")  # the blank line counts
    path = write(tmp_path, "y.csv", "u,i,t,s\n1,2,3,4\n1,,4,5\n")
    one_line_error(lambda: read_log(spec_for(path)), "y.csv:3", "'i'", "empty")


def test_binary_label_must_be_0_or_1_unless_thresholded(tmp_path):
    path = write(tmp_path, "x.csv", "u,i,t,s\n1,2,3,1\n1,3,4,2\n")
    spec = spec_for(path, labels={"like": {"kind": "binary", "column": "s"}})
    one_line_error(lambda: read_log(spec), "x.csv:3", "'s'", "0 or 1", "'2'")
    spec["labels"]["like"]["threshold"] = 2
    assert read_log(spec).events["like"].tolist() == [0.0, 1.0]


def test_empty_log_and_bad_specs(tmp_path):
    path = write(tmp_path, "x.csv", "u,i,t,s\n")
    one_line_error(lambda: read_log(spec_for(path)), "x.csv", "no data rows")
    path = write(tmp_path, "e.csv", "")
    one_line_error(lambda: read_log(spec_for(path)), "e.csv", "empty")
    good = write(tmp_path, "g.csv", "u,i,t,s,ev\n1,2,3,4,view\n")
    one_line_error(lambda: read_log(spec_for(good, labels={"x": {"kind": "count", "column": "s"}})),
                   "labels.x.kind", kind=ConfigError)
    one_line_error(lambda: read_log({**spec_for(good), "colums": {}}), "'colums'", kind=ConfigError)


def test_an_event_value_that_never_occurs_is_a_warning(tmp_path, caplog):
    good = write(tmp_path, "g.csv", "u,i,t,s,ev\n1,2,3,4,view\n")
    lg = read_log(spec_for(good, labels={"buy": {"kind": "event", "column": "ev", "value": "by"}}))
    assert lg.events["buy"].tolist() == [0.0]
    assert "'by'" in caplog.text and "values present: view" in caplog.text


def test_a_new_behaviour_column_is_one_more_label(tmp_path):
    path = write(tmp_path, "x.csv", "u,i,t,s,is_share\n1,2,3,4,1\n1,3,4,5,0\n")
    lg = read_log(spec_for(path, labels={"score": {"kind": "numeric", "column": "s"},
                                         "share": {"kind": "binary", "column": "is_share"}}))
    assert lg.events["share"].tolist() == [1.0, 0.0] and lg.labels["share"]["kind"] == "binary"


def test_preset_offers_match_the_conf_yaml():
    yaml = pytest.importorskip("yaml")
    folder = Path(__file__).resolve().parents[2] / "conf" / "dataset"
    for layout in logmod.PRESETS:
        conf = yaml.safe_load((folder / f"{layout}.yaml").read_text())
        assert conf["layout"] == layout and conf["offers"] == logmod.offers(layout), layout
