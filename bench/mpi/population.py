"""Synthetic Chinese patient population with ground truth, for measuring the MPI matcher.

Deterministic for a given seed. People live in households (couples, children with
generation-character names, twins, three generations); each person is registered at 1–4
member organizations of the alliance, and every registration goes through the noise a real
registration desk produces: homophone and look-alike character typos, pinyin-only names in
several spellings and orders, missing / mistyped / placeholder / 15-digit resident IDs, day
and month swapped, one-digit date typos, changed or missing phones, address variations and
moves, newborns registered under the mother's name (sometimes with the mother's ID).

This file keeps its own tables (surnames, name characters, look-alike characters) on
purpose, separate from hub.mpi.data, so the matcher is not tested against its own tables.

Output: :class:`GeneratedRecord` (record id, true person id, FHIR Patient dict with the
organization in ``meta.source``).

Run ``python -m bench.mpi.population --people 1000 --out patients.ndjson`` to write NDJSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from dataclasses import dataclass, field

from pypinyin import Style, lazy_pinyin, pinyin

RESIDENT_ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
HEALTH_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.19"
INSURANCE_SYSTEM = "urn:oid:2.16.156.10011.1.15"
REFERENCE_DATE = dt.date(2025, 6, 30)

# --------------------------------------------------------------------------- tables

# (surname, weight in per-mille, romanization when not the default reading)
SURNAMES: list[tuple[str, float, str | None]] = [
    ("王", 71.5, None), ("李", 72.0, None), ("张", 68.0, None), ("刘", 53.0, None), ("陈", 46.0, None),
    ("杨", 31.5, None), ("黄", 22.5, None), ("赵", 22.0, None), ("吴", 20.5, None), ("周", 19.0, None),
    ("徐", 15.0, None), ("孙", 14.5, None), ("马", 13.5, None), ("朱", 12.5, None), ("胡", 12.0, None),
    ("郭", 11.5, None), ("何", 11.0, None), ("高", 10.0, None), ("林", 10.0, None), ("罗", 9.0, None),
    ("郑", 8.8, None), ("梁", 8.5, None), ("谢", 7.0, None), ("宋", 6.8, None), ("唐", 6.5, None),
    ("许", 6.0, None), ("韩", 5.8, None), ("冯", 5.7, None), ("邓", 5.6, None), ("曹", 5.5, None),
    ("彭", 5.2, None), ("曾", 5.0, "zeng"), ("肖", 4.9, None), ("田", 4.6, None), ("董", 4.5, None),
    ("袁", 4.3, None), ("潘", 4.1, None), ("于", 4.0, None), ("蒋", 4.0, None), ("蔡", 3.9, None),
    ("余", 3.9, None), ("杜", 3.8, None), ("叶", 3.8, None), ("程", 3.7, None), ("苏", 3.6, None),
    ("魏", 3.5, None), ("吕", 3.4, None), ("丁", 3.3, None), ("任", 3.2, None), ("沈", 3.1, "shen"),
    ("姚", 3.0, None), ("卢", 3.0, None), ("姜", 2.9, None), ("崔", 2.8, None), ("钟", 2.7, None),
    ("谭", 2.6, None), ("陆", 2.5, None), ("汪", 2.5, None), ("范", 2.4, None), ("金", 2.4, None),
    ("石", 2.3, None), ("廖", 2.3, None), ("贾", 2.2, None), ("夏", 2.2, None), ("韦", 2.1, None),
    ("付", 2.1, None), ("方", 2.0, None), ("白", 2.0, None), ("邹", 2.0, None), ("孟", 1.9, None),
    ("熊", 1.9, None), ("秦", 1.8, None), ("邱", 1.8, None), ("江", 1.8, None), ("尹", 1.7, None),
    ("薛", 1.6, None), ("闫", 1.6, None), ("段", 1.5, None), ("雷", 1.5, None), ("侯", 1.5, None),
    ("龙", 1.5, None), ("史", 1.4, None), ("陶", 1.4, None), ("黎", 1.4, None), ("贺", 1.3, None),
    ("顾", 1.3, None), ("毛", 1.3, None), ("郝", 1.2, None), ("龚", 1.2, None), ("邵", 1.2, None),
    ("万", 1.1, None), ("钱", 1.1, None), ("严", 1.0, None), ("覃", 1.0, "qin"), ("武", 1.0, None),
    ("戴", 1.0, None), ("莫", 1.0, None), ("孔", 0.9, None), ("向", 0.9, None), ("汤", 0.9, None),
    ("单", 0.3, "shan"), ("仇", 0.15, "qiu"), ("解", 0.2, "xie"), ("区", 0.1, "ou"), ("查", 0.15, "zha"),
    ("朴", 0.1, "piao"), ("乐", 0.1, "yue"), ("翟", 0.4, "zhai"), ("缪", 0.15, "miao"),
    ("欧阳", 0.4, None), ("司马", 0.08, None), ("诸葛", 0.05, None), ("上官", 0.08, None),
    ("东方", 0.05, None), ("皇甫", 0.05, None), ("尉迟", 0.03, "yuchi"), ("公孙", 0.03, None),
    ("慕容", 0.03, None), ("长孙", 0.02, "zhangsun"), ("宇文", 0.02, None), ("司徒", 0.06, None),
    ("夏侯", 0.03, None), ("令狐", 0.03, None),
]

MALE_CHARS = ("伟强磊军勇杰涛明超刚平辉鹏华飞斌宇浩凯健俊帆帅旭宁龙林洋峰波鑫博文晨阳亮成东海建国"
              "志振彬鸿毅晓子轩睿泽航嘉逸辰豪铭昊天然坤翔宏永德春立新光荣昌武兴祥福金贵安庆家")
FEMALE_CHARS = ("芳娜敏静丽艳娟霞秀英玲燕红梅兰萍婷雪琳慧颖倩洁琴云莉欣怡佳雨涵萱诗梦思悦彤瑶婧晶"
                "璐蕾欢月凤桂珍玉清淑惠美巧妍晓小文春丹嘉可馨语若琪雅")
OLD_NAMES_M = ["建国", "建华", "建军", "国强", "志强", "国庆", "德明", "永康", "福生", "爱国", "卫东", "红军"]
OLD_NAMES_F = ["秀英", "桂英", "秀兰", "玉兰", "秀珍", "桂兰", "玉梅", "凤英", "淑珍", "美华", "红梅", "素芬"]
GENERATION_CHARS = "文志家天子思嘉晓明雨永俊宇佳"

# Look-alike characters as a registration clerk mistypes them (the generator's own list).
LOOKALIKE = ["己已", "未末", "王玉", "日曰", "大太", "戊戌", "候侯", "晴睛", "明朋", "杨扬", "峰锋",
             "娟鹃", "红虹", "琳淋", "宏弘", "浩皓", "斌彬", "玲铃", "辉晖", "凤风", "陈阵", "刘浏",
             "何河", "徐涂", "孙逊", "唐塘", "钟钏", "谭潭", "陆陵", "江汪", "薛薪", "陶淘", "郝赫",
             "邵绍", "颖颍", "鹏朋", "建健", "萍苹", "梅海", "清请", "婷停", "海梅"]

# (code, province, city, district)
REGIONS: list[tuple[str, str, str, str]] = [
    ("420102", "湖北省", "武汉市", "江岸区"), ("420103", "湖北省", "武汉市", "江汉区"),
    ("420104", "湖北省", "武汉市", "硚口区"), ("420106", "湖北省", "武汉市", "武昌区"),
    ("420111", "湖北省", "武汉市", "洪山区"), ("420115", "湖北省", "武汉市", "江夏区"),
    ("420502", "湖北省", "宜昌市", "西陵区"), ("420602", "湖北省", "襄阳市", "襄城区"),
    ("421002", "湖北省", "荆州市", "沙市区"), ("420902", "湖北省", "孝感市", "孝南区"),
    ("421102", "湖北省", "黄冈市", "黄州区"), ("420303", "湖北省", "十堰市", "张湾区"),
    ("110101", "北京市", "北京市", "东城区"), ("310104", "上海市", "上海市", "徐汇区"),
    ("440106", "广东省", "广州市", "天河区"), ("440304", "广东省", "深圳市", "福田区"),
    ("510104", "四川省", "成都市", "锦江区"), ("430102", "湖南省", "长沙市", "芙蓉区"),
    ("410105", "河南省", "郑州市", "金水区"), ("360102", "江西省", "南昌市", "东湖区"),
    ("340104", "安徽省", "合肥市", "蜀山区"), ("320102", "江苏省", "南京市", "玄武区"),
    ("330106", "浙江省", "杭州市", "西湖区"), ("500103", "重庆市", "重庆市", "渝中区"),
    ("610113", "陕西省", "西安市", "雁塔区"), ("370102", "山东省", "济南市", "历下区"),
]
LOCAL_REGIONS = REGIONS[:12]
STREETS = ["解放大道", "中山大道", "建设大道", "人民路", "和平大道", "光明路", "友谊大道", "新华路",
           "长江路", "黄河路", "胜利街", "沿江大道", "珞喻路", "武珞路", "民主路", "幸福路", "朝阳路",
           "东风大道", "青年路", "发展大道", "工农路", "中南路", "八一路", "鲁磨路", "关山大道",
           "雄楚大道", "汉阳大道", "丽水路", "滨江路", "文化路", "学院路", "振兴街", "金桥大道"]
ESTATES = ["", "", "", "阳光小区", "幸福家园", "锦绣花园", "翠苑", "丽景湾", "东湖花园", "长江新村",
           "金色港湾", "万科城", "保利花园", "碧桂园", "名都花园", "职工宿舍"]
ORGS = ["WHZX", "WHEY", "JAQY", "JHQY", "HSQY", "WCQW", "JXRM", "XLSQ", "ZWSQ", "QKSQ", "HKZY", "SSSQ"]
PLACEHOLDER_IDS = ["111111111111111111", "000000000000000000", "123456789012345678",
                   "11010519491231002X", "420000000000000000"]
CN_DIGITS = "〇一二三四五六七八九"


@dataclass(frozen=True)
class NoiseConfig:
    """Per-record error rates at registration."""

    id_missing_adult: float = 0.15
    id_missing_child: float = 0.45
    id_wrong_digit: float = 0.03
    id_transposed: float = 0.01
    id_placeholder: float = 0.01
    id_legacy_15: float = 0.03          # only people born before 1985
    name_homophone: float = 0.03
    name_lookalike: float = 0.015
    pinyin_only: float = 0.05
    pinyin_extra: float = 0.10
    dob_swap: float = 0.02
    dob_digit: float = 0.02
    dob_missing: float = 0.02
    sex_missing: float = 0.02
    sex_wrong: float = 0.002
    phone_missing: float = 0.20
    phone_changed: float = 0.10
    address_missing: float = 0.15
    address_moved: float = 0.08
    address_reformat: float = 0.35
    health_card: float = 0.25
    insurance_card: float = 0.30
    duplicate_same_org: float = 0.08


@dataclass
class Person:
    pid: str
    surname: str
    given: str
    sex: str
    birth: dt.date
    resident_id: str
    household: int
    phone: str
    address: tuple[str, str, str, str]   # province, city, district, street line
    multiple_birth_order: int | None = None
    mother: "Person | None" = None
    newborn: bool = False
    health_card: str = ""
    insurance: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class GeneratedRecord:
    record_id: str
    person_id: str
    org: str
    patient: dict


# --------------------------------------------------------------------------- helpers

def _check_char(first17: str) -> str:
    w = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return "10X98765432"[sum(int(d) * x for d, x in zip(first17, w)) % 11]


def _is_valid_id(v: str) -> bool:
    return len(v) == 18 and v[:17].isdigit() and _check_char(v[:17]) == v[17]


class _Homophones:
    """Characters grouped by toneless reading, from the generator's name pools and a list of
    common characters (so homophone typos look like what a pinyin input method offers)."""

    EXTRA = ("张章彰樟李理里礼力立丽利莉历王汪望旺刘留流柳六陈晨辰臣沉尘杨阳扬洋羊黄皇煌凰赵照兆召"
             "吴武午五伍周州洲舟徐许旭序孙逊马玛码朱珠株猪胡湖虎户郭国过何和河合高糕林琳霖临罗洛"
             "郑正政证梁良凉粮谢斜写泻宋送诵唐堂塘糖许须徐韩寒含涵冯峰锋风丰邓登灯曹草朝潮彭朋鹏蓬"
             "伟威维微卫为强墙蔷磊雷蕾军君均俊勇永咏涌杰洁捷结涛桃陶淘明铭鸣名超潮钞刚钢纲平萍评凭"
             "辉晖徽慧惠会华桦花化飞菲非妃斌彬宾滨宇雨语玉浩豪好皓凯恺楷健建剑见芳方放纺娜那纳敏民"
             "静晶精靖婧艳燕雁岩娟鹃涓霞侠秀绣英莹颖影婷亭廷庭雪学琴勤芹云芸运韵欣心新馨怡仪宜毅"
             "佳家嘉加涵寒瑶遥尧思丝斯悦月越跃彤同桐童晓小笑孝文雯闻梦蒙盟诗师施")

    def __init__(self, chars: str) -> None:
        self.groups: dict[str, list[str]] = {}
        self.reading: dict[str, str] = {}
        for ch in dict.fromkeys(chars + self.EXTRA):
            r = pinyin(ch, style=Style.NORMAL)[0][0]
            self.reading[ch] = r
            self.groups.setdefault(r, []).append(ch)

    def alternatives(self, ch: str) -> list[str]:
        r = self.reading.get(ch) or pinyin(ch, style=Style.NORMAL)[0][0]
        return [c for c in self.groups.get(r, []) if c != ch]


# --------------------------------------------------------------------------- generator

class PopulationGenerator:
    """Builds people and their registrations. Use :func:`generate_population`."""

    def __init__(self, seed: int = 42, noise: NoiseConfig | None = None) -> None:
        self.rng = random.Random(seed)
        self.noise = noise or NoiseConfig()
        self.people: list[Person] = []
        self._seq = 0
        self._used_ids: set[str] = set()
        self._used_phones: set[str] = set()
        self._surnames = [s for s, _, _ in SURNAMES]
        self._weights = [w for _, w, _ in SURNAMES]
        self._reading = {s: r for s, _, r in SURNAMES if r}
        self._homophones = _Homophones(MALE_CHARS + FEMALE_CHARS + "".join(self._surnames))
        self._lookalike: dict[str, list[str]] = {}
        for pair in LOOKALIKE:
            a, b = pair[0], pair[1]
            self._lookalike.setdefault(a, []).append(b)
            self._lookalike.setdefault(b, []).append(a)
        self._record_seq = 0

    # people ---------------------------------------------------------------------------

    def surname(self) -> str:
        return self.rng.choices(self._surnames, self._weights)[0]

    def given_name(self, sex: str, birth: dt.date, generation_char: str | None = None) -> str:
        rng = self.rng
        pool = MALE_CHARS if sex == "male" else FEMALE_CHARS
        if birth.year < 1965 and rng.random() < 0.35:
            return rng.choice(OLD_NAMES_M if sex == "male" else OLD_NAMES_F)
        if generation_char:
            return generation_char + rng.choice(pool)
        if rng.random() < 0.25:
            return rng.choice(pool)
        return rng.choice(pool) + rng.choice(pool)

    def resident_id(self, region: str, birth: dt.date, sex: str) -> str:
        while True:
            seq = self.rng.randrange(0, 500) * 2 + (1 if sex == "male" else 0)
            first17 = f"{region}{birth:%Y%m%d}{seq:03d}"
            rid = first17 + _check_char(first17)
            if rid not in self._used_ids:
                self._used_ids.add(rid)
                return rid

    def phone(self) -> str:
        while True:
            if self.rng.random() < 0.05:
                p = "027" + str(self.rng.randrange(80000000, 89999999))
            else:
                p = self.rng.choice(["13", "15", "18", "17", "19"]) + str(self.rng.randrange(0, 10)) + \
                    f"{self.rng.randrange(0, 10 ** 8):08d}"
            if p not in self._used_phones:
                self._used_phones.add(p)
                return p

    def home(self) -> tuple[str, str, str, str]:
        _, prov, city, dist = self.rng.choice(LOCAL_REGIONS)
        line = f"{self.rng.choice(STREETS)}{self.rng.randrange(1, 800)}号{self.rng.choice(ESTATES)}"
        if self.rng.random() < 0.7:
            line += f"{self.rng.randrange(1, 30)}栋{self.rng.randrange(1, 6)}单元{self.rng.randrange(1, 33)}0{self.rng.randrange(1, 5)}室"
        return prov, city, dist, line

    def birth_date(self, lo_year: int, hi_year: int) -> dt.date:
        start = dt.date(lo_year, 1, 1).toordinal()
        end = min(dt.date(hi_year, 12, 31), REFERENCE_DATE).toordinal()
        return dt.date.fromordinal(self.rng.randrange(start, end + 1))

    def person(self, household: int, sex: str, birth: dt.date, surname: str, given: str,
               phone: str, address, *, local_birth: bool = True, **extra) -> Person:
        self._seq += 1
        region = self.rng.choice(LOCAL_REGIONS if (local_birth and self.rng.random() < 0.8) else REGIONS)[0]
        p = Person(f"P{self._seq:07d}", surname, given, sex, birth, self.resident_id(region, birth, sex),
                   household, phone, address, **extra)
        if self.rng.random() < 0.6:
            p.health_card = f"HC{self.rng.randrange(10 ** 11, 10 ** 12)}"
        if self.rng.random() < 0.7:
            p.insurance = f"4201{self.rng.randrange(10 ** 9, 10 ** 10)}"
        self.people.append(p)
        return p

    def household(self, hid: int) -> None:
        rng = self.rng
        addr = self.home()
        kind = rng.random()
        if kind < 0.22:  # single adult
            sex = rng.choice(["male", "female"])
            b = self.birth_date(1935, 2005)
            self.person(hid, sex, b, self.surname(), self.given_name(sex, b), self.phone(), addr)
            return
        father_birth = self.birth_date(1940, 2000)
        mother_birth = father_birth + dt.timedelta(days=rng.randrange(-5 * 365, 3 * 365))
        fam = self.surname()
        father = self.person(hid, "male", father_birth, fam, self.given_name("male", father_birth),
                             self.phone(), addr)
        mom_surname = self.surname()
        mother = self.person(hid, "female", mother_birth, mom_surname,
                             self.given_name("female", mother_birth), self.phone(), addr)
        if kind < 0.40:
            return  # couple
        if kind > 0.90:  # three generations: a grandparent lives with them
            gb = father_birth - dt.timedelta(days=rng.randrange(20 * 365, 35 * 365))
            if gb.year > 1915:
                gsex = rng.choice(["male", "female"])
                self.person(hid, gsex, gb, fam if gsex == "male" else self.surname(),
                            self.given_name(gsex, gb), self.phone() if rng.random() < 0.5 else father.phone, addr)
        first_child = mother_birth + dt.timedelta(days=rng.randrange(20 * 365, 36 * 365))
        if first_child > REFERENCE_DATE:
            return
        n_children = rng.choices([1, 2, 3], [0.55, 0.35, 0.10])[0]
        gen_char = rng.choice(GENERATION_CHARS) if rng.random() < 0.4 else None
        child_birth = first_child
        # parents do not give two children names that sound the same
        taken = {"".join(lazy_pinyin(father.given)), "".join(lazy_pinyin(mother.given))}
        for _ in range(n_children):
            if child_birth > REFERENCE_DATE:
                break
            newborn = (REFERENCE_DATE - child_birth).days < 60 or rng.random() < 0.04
            twins = rng.random() < 0.03
            count = 2 if twins else 1
            sexes = [rng.choice(["male", "female"]) for _ in range(count)]
            names: list[str] = []
            for i, sex in enumerate(sexes):
                if twins and i == 1 and rng.random() < 0.5 and len(names[0]) == 2:
                    # twin names: share the first character, differ in the second
                    pool = MALE_CHARS if sex == "male" else FEMALE_CHARS
                    g = names[0][0] + rng.choice([c for c in pool if c != names[0][1]])
                    while "".join(lazy_pinyin(g)) in taken:
                        g = names[0][0] + rng.choice(pool)
                else:
                    g = self.given_name(sex, child_birth, gen_char)
                    while "".join(lazy_pinyin(g)) in taken:
                        g = self.given_name(sex, child_birth, gen_char)
                names.append(g)
                taken.add("".join(lazy_pinyin(g)))
            sur = fam if rng.random() < 0.9 else mom_surname
            for i in range(count):
                self.person(hid, sexes[i], child_birth, sur, names[i],
                            mother.phone if rng.random() < 0.6 else self.phone(), addr,
                            multiple_birth_order=(i + 1) if twins else None, mother=mother,
                            newborn=newborn)
            child_birth += dt.timedelta(days=rng.randrange(400, 6 * 365))

    def namesake(self, hid: int, template: Person) -> None:
        """Another person with the same common name, born the same year elsewhere."""
        b = self.birth_date(template.birth.year, template.birth.year)
        if b == template.birth:
            b += dt.timedelta(days=3)
        self.person(hid, template.sex, b, template.surname, template.given, self.phone(), self.home())

    # records --------------------------------------------------------------------------

    def _pinyin(self, surname: str, given: str) -> tuple[str, str]:
        sur = self._reading.get(surname) or "".join(lazy_pinyin(surname))
        giv = "".join(lazy_pinyin(given))
        return sur, giv

    def _pinyin_text(self, surname: str, given: str) -> str:
        sur, giv = self._pinyin(surname, given)
        syl = lazy_pinyin(given)
        style = self.rng.randrange(7)
        if style == 0:
            return f"{sur.upper()} {giv.upper()}"
        if style == 1:
            return f"{sur.title()} {giv.title()}"
        if style == 2:
            return f"{giv.title()} {sur.title()}"
        if style == 3:
            return f"{sur.upper()} {' '.join(s.title() for s in syl)}"
        if style == 4:
            return f"{sur.title()}, {giv.title()}"
        if style == 5:
            return f"{sur} {'-'.join(syl)}"
        return f"{giv.title()} {sur.upper()}"

    def _typo(self, name: str) -> str:
        rng = self.rng
        pos = rng.randrange(len(name))
        if rng.random() < 0.67:
            alts = self._homophones.alternatives(name[pos])
        else:
            alts = self._lookalike.get(name[pos], [])
        if not alts:
            return name
        return name[:pos] + rng.choice(alts) + name[pos + 1:]

    def _id_value(self, p: Person) -> str | None:
        n, rng = self.noise, self.rng
        if p.newborn:
            if p.mother is not None and rng.random() < 0.3:
                return p.mother.resident_id  # newborn registered with the mother's ID
            return None
        child = (REFERENCE_DATE - p.birth).days < 16 * 365
        if rng.random() < (n.id_missing_child if child else n.id_missing_adult):
            return None
        r = rng.random()
        v = p.resident_id
        if r < n.id_wrong_digit:
            pos = rng.randrange(17)
            while True:
                d = str(rng.randrange(10))
                cand = v[:pos] + d + v[pos + 1:]
                if d != v[pos] and not _is_valid_id(cand):
                    return cand
        r -= n.id_wrong_digit
        if r < n.id_transposed:
            pos = rng.randrange(16)
            cand = v[:pos] + v[pos + 1] + v[pos] + v[pos + 2:]
            return cand if cand != v else v
        r -= n.id_transposed
        if r < n.id_placeholder:
            return rng.choice(PLACEHOLDER_IDS)
        r -= n.id_placeholder
        if r < n.id_legacy_15 and p.birth.year < 1985:
            return v[:6] + v[8:17]
        return v.lower() if v.endswith("X") and rng.random() < 0.3 else v

    def _birth(self, p: Person) -> str | None:
        n, rng = self.noise, self.rng
        b = p.birth
        r = rng.random()
        if r < n.dob_missing:
            return None
        r -= n.dob_missing
        if r < n.dob_swap and b.day <= 12 and b.day != b.month:
            return dt.date(b.year, b.day, b.month).isoformat()
        r -= n.dob_swap
        if r < n.dob_digit:
            s = f"{b:%Y%m%d}"
            for _ in range(20):
                pos = rng.choice([2, 3, 5, 6, 7])
                cand = s[:pos] + str(rng.randrange(10)) + s[pos + 1:]
                try:
                    d = dt.date(int(cand[:4]), int(cand[4:6]), int(cand[6:]))
                except ValueError:
                    continue
                if d != b:
                    return d.isoformat()
        return b.isoformat()

    def _address(self, p: Person, moved: tuple | None) -> dict | None:
        n, rng = self.noise, self.rng
        if rng.random() < n.address_missing:
            return None
        prov, city, dist, line = moved or p.address
        if rng.random() < n.address_reformat:
            style = rng.randrange(5)
            if style == 0:
                return {"text": f"{city}{dist}{line}"}
            if style == 1:
                return {"text": f"{prov} {city} {dist} {line}"}
            if style == 2:
                num = "".join(CN_DIGITS[int(c)] if c.isdigit() and rng.random() < 0.5 else c for c in line)
                return {"text": f"{prov}{city}{dist}{num}"}
            if style == 3:
                return {"text": f"{dist}{line.split('号')[0]}号"}
            return {"state": prov, "city": city, "district": dist, "line": [line]}
        if rng.random() < 0.5:
            return {"state": prov, "city": city, "district": dist, "line": [line]}
        return {"text": f"{prov}{city}{dist}{line}"}

    def _phone_text(self, phone: str) -> str:
        r = self.rng.randrange(5)
        if phone.startswith("0"):
            return [phone, f"{phone[:3]}-{phone[3:]}", f"({phone[:3]}){phone[3:]}", f"+86 {phone[1:3]} {phone[3:]}",
                    phone][r]
        return [phone, f"+86{phone}", f"{phone[:3]} {phone[3:7]} {phone[7:]}", f"{phone[:3]}-{phone[3:7]}-{phone[7:]}",
                f"+86 {phone}"][r]

    def record(self, p: Person, org: str, state: dict) -> GeneratedRecord:
        n, rng = self.noise, self.rng
        self._record_seq += 1
        rid = f"R{self._record_seq:08d}"
        patient: dict = {"resourceType": "Patient", "id": rid,
                         "meta": {"source": f"urn:yilian:org:{org}"}}
        idents = [{"system": f"urn:yilian:org:{org}:mrn", "value": f"{org}{self._record_seq:08d}"}]
        rid_value = self._id_value(p)
        if rid_value:
            idents.append({"system": RESIDENT_ID_SYSTEM, "value": rid_value})
        if p.health_card and rng.random() < n.health_card:
            idents.append({"system": HEALTH_CARD_SYSTEM, "value": p.health_card})
        if p.insurance and rng.random() < n.insurance_card:
            idents.append({"system": INSURANCE_SYSTEM, "value": p.insurance})
        patient["identifier"] = idents

        # name
        if p.newborn and p.mother is not None and not state.get("named"):
            mom = p.mother.surname + p.mother.given
            suffix = rng.choice(["之子", "之女", "婴", "之婴"]) if rng.random() < 0.3 else \
                ("之子" if p.sex == "male" else "之女")
            text = mom + suffix + (str(p.multiple_birth_order) if p.multiple_birth_order else "")
            patient["name"] = [{"use": "temp", "text": text}]
        else:
            surname, given = p.surname, p.given
            r = rng.random()
            if r < n.name_homophone + n.name_lookalike:
                if rng.random() < 0.8 or len(surname) > 1:
                    given = self._typo(given)
                else:
                    surname = self._typo(surname)
            if rng.random() < n.pinyin_only:
                patient["name"] = [{"use": "official", "text": self._pinyin_text(surname, given)}]
            else:
                hn = {"use": "official", "text": surname + given}
                if rng.random() < 0.5:
                    hn = {"use": "official", "family": surname, "given": [given]}
                elif rng.random() < 0.05:
                    hn = {"use": "official", "text": surname + " " + given}
                names = [hn]
                if rng.random() < n.pinyin_extra:
                    names.append({"use": "usual", "text": self._pinyin_text(p.surname, p.given)})
                patient["name"] = names
        # sex
        r = rng.random()
        if r < n.sex_missing:
            patient["gender"] = "unknown"
        elif r < n.sex_missing + n.sex_wrong:
            patient["gender"] = "female" if p.sex == "male" else "male"
        else:
            patient["gender"] = p.sex
        bd = self._birth(p)
        if bd:
            patient["birthDate"] = bd
        # phone
        if rng.random() >= n.phone_missing:
            phone = p.phone
            if state.get("new_phone") or rng.random() < n.phone_changed:
                state.setdefault("new_phone", self.phone())
                phone = state["new_phone"]
            patient["telecom"] = [{"system": "phone", "value": self._phone_text(phone), "use": "mobile"}]
        moved = None
        if state.get("moved") or rng.random() < n.address_moved:
            state.setdefault("moved", self.home())
            moved = state["moved"]
        addr = self._address(p, moved)
        if addr:
            patient["address"] = [addr]
        if p.multiple_birth_order:
            if rng.random() < 0.5:
                patient["multipleBirthInteger"] = p.multiple_birth_order
            elif rng.random() < 0.5:
                patient["multipleBirthBoolean"] = True
        return GeneratedRecord(rid, p.pid, org, patient)

    def records(self) -> list[GeneratedRecord]:
        rng = self.rng
        out: list[GeneratedRecord] = []
        for p in self.people:
            k = rng.choices([1, 2, 3, 4], [0.35, 0.30, 0.20, 0.15])[0]
            orgs = rng.sample(ORGS, k)
            if k > 1 and rng.random() < self.noise.duplicate_same_org:
                orgs[-1] = orgs[0]
            state: dict = {}
            for i, org in enumerate(orgs):
                if p.newborn and i > 0 and rng.random() < 0.5:
                    state["named"] = True  # later registered under the child's own name
                out.append(self.record(p, org, state))
        rng.shuffle(out)
        return out


def generate_population(people: int = 1000, seed: int = 42,
                        noise: NoiseConfig | None = None) -> list[GeneratedRecord]:
    """About ``people`` persons in households, 1–4 registrations each, shuffled.
    ~1 % of persons are namesakes (same name as someone, same birth year)."""
    gen = PopulationGenerator(seed, noise)
    hid = 0
    while len(gen.people) < people:
        hid += 1
        gen.household(hid)
        if gen.rng.random() < 0.03 and gen.people:
            tpl = gen.rng.choice(gen.people)
            if not tpl.newborn:
                hid += 1
                gen.namesake(hid, tpl)
    return gen.records()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="-")
    args = ap.parse_args(argv)
    recs = generate_population(args.people, args.seed)
    lines = (json.dumps({"person": r.person_id, "org": r.org, "patient": r.patient}, ensure_ascii=False)
             for r in recs)
    if args.out == "-":
        for line in lines:
            print(line)
    else:
        with open(args.out, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
